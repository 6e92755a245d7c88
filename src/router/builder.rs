//! Building a [`Router`]: its table, paths, bounds, policies and extractors.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::classify::Paths;
use super::extract::{KeyExtractor, OperatorScope, PrincipalExtractor, TenantExtractor};
use super::fleet::{Fleet, Placement};
use super::metrics::Counters;
use super::reject::Rejection;
use super::{Config, Router};
use crate::table::{Key, MemoryTable, MemoryTableConfig, SessionTable};

/// Builds a [`Router`]; see each method for its default.
pub struct RouterBuilder<T = MemoryTable> {
    table: T,
    config: Config,
    store: Option<super::SharedStore>,
    max_backends: usize,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl Router {
    /// A builder with every default: a [`MemoryTable`] with its defaults, legacy SSE on `/sse`
    /// and `/messages`, least-sessions placement.
    pub fn builder() -> RouterBuilder<MemoryTable> {
        RouterBuilder {
            table: MemoryTable::new(),
            config: Config {
                paths: Paths {
                    sse: Some("/sse".into()),
                    messages: vec!["/messages".into(), "/messages/".into()],
                    mcp: None,
                    task_creating: vec!["tools/call".into()],
                },
                max_key_len: Key::DEFAULT_MAX_LEN,
                max_observe: 64 * 1024,
                placement: Placement::default(),
                placement_attempts: 3,
                retry_after: 1,
                removal_grace: Duration::from_secs(60),
                down_grace: None,
                cookie: None,
                tenant: None,
                operator: None,
                operator_scope: OperatorScope::default(),
                principal: None,
                rejection_body: None,
                #[cfg(feature = "seal")]
                sealing: None,
            },
            store: None,
            max_backends: 4096,
            unhealthy_after: 3,
            healthy_after: 2,
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
            config: self.config,
            store: self.store,
            max_backends: self.max_backends,
            unhealthy_after: self.unhealthy_after,
            healthy_after: self.healthy_after,
        }
    }

    /// The legacy HTTP+SSE stream path (default `/sse`); `None` turns legacy SSE handling off.
    pub fn sse_path(mut self, path: Option<&str>) -> Self {
        self.config.paths.sse = path.map(Into::into);
        self
    }

    /// The legacy HTTP+SSE message paths (default `/messages` and `/messages/`).
    pub fn message_paths<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.config.paths.messages = paths.into_iter().map(Into::into).collect();
        self
    }

    /// The paths of the Streamable HTTP / 2026-07-28 endpoints (for example `/mcp`). Requests
    /// to other paths are routed as plain HTTP: placed, nothing learned or forgotten from
    /// their answers; with principal binding, a session or task key they carry is still
    /// checked (refused if unknown or another principal's: a backend may read the request as
    /// one of that session's). By default every path is an endpoint except `/.well-known/…`
    /// (OAuth discovery and the like).
    pub fn mcp_paths<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.config.paths.mcp = Some(paths.into_iter().map(Into::into).collect());
        self
    }

    /// The `Mcp-Method`s whose 2026-07-28 responses may hold a `CreateTaskResult` and are
    /// observed for one (default `tools/call`).
    pub fn task_creating_methods<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        methods: I,
    ) -> Self {
        self.config.paths.task_creating = methods.into_iter().map(Into::into).collect();
        self
    }

    /// The longest key id accepted, in bytes (default 256); a longer one presented by a client
    /// is answered as an unknown key ([`Reason::InvalidKey`](super::Reason::InvalidKey): 404,
    /// or 400 for an operator key, which the client chose). A backend's `Mcp-Session-Id`
    /// past it is refused at once ([`Reason::UnroutableKey`](super::Reason::UnroutableKey),
    /// 502, in place of the response); one revealed in a body (a legacy SSE `endpoint`, a
    /// `taskId`), which is already on its way to the client, is only counted, and its
    /// client's next request is answered as an unknown key.
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.config.max_key_len = bytes;
        self
    }

    /// The most bytes of a response body observed for a key (default 64 KiB); past it the
    /// router stops observing. It is also what one exchange may hold: a 2026-07-28 JSON
    /// answer is copied up to it to be parsed, and with sealed ids a legacy SSE stream is held
    /// back up to it (and the chunk that crosses it) until its `endpoint` event.
    pub fn max_observed_bytes(mut self, bytes: usize) -> Self {
        self.config.max_observe = bytes;
        self
    }

    /// How conversations are placed (default [`Placement::LeastSessions`]).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.config.placement = placement;
        self
    }

    /// The most backend slots, from 1 to 65,535 (default 4,096; a value out of that range is
    /// clamped into it).
    pub fn max_backends(mut self, slots: usize) -> Self {
        self.max_backends = slots;
        self
    }

    /// Consecutive results that change a backend's [`Health`](super::Health) (see
    /// [`Router::report_health`]): `unhealthy_after` failed checks make it unhealthy, and as
    /// many refused connections make it down (default 3); `healthy_after` good checks make it
    /// healthy again (default 2). A threshold of 0 counts as 1.
    pub fn health_thresholds(mut self, unhealthy_after: u32, healthy_after: u32) -> Self {
        self.unhealthy_after = unhealthy_after;
        self.healthy_after = healthy_after;
        self
    }

    /// How long the keys of a removed backend are kept, so that their clients are told
    /// [`OwnerGone`](super::Reason::OwnerGone) rather than "unknown" (default 60 s; zero purges at
    /// once). Nothing is ever routed to a removed backend meanwhile.
    pub fn removal_grace(mut self, grace: Duration) -> Self {
        self.config.removal_grace = grace;
        self
    }

    /// With a fleet of routers (sealed ids or a shared store): how long after this router saw
    /// a backend go down a session it cannot place on either side of the loss is answered 503
    /// rather than 404 (default: for as long as the backend is down here). Such a session was
    /// sealed or bound within the clock skew of the loss: by the process that died, or by its
    /// new one, which another router has seen come back sooner; unsure, the router never
    /// turns it into a 404 by default. It ends when the backend comes back here (its new
    /// process answers 404 for what it does not know) or is removed (404). With a grace,
    /// a backend still down here past it is taken for dead and the session gets the 404 that
    /// makes its client start over: set it to the time this router's health checks surely
    /// take to see a backend answer again. (A session surely made after the loss is 503 for
    /// as long as the backend is down here; one surely made before, 404 at once.) Operator
    /// keys are not bounded by it: one bound within the skew of its owner's loss is 503 for
    /// as long as the owner is down here or its store binding lives, since binding it afresh
    /// here while a router that saw the comeback keeps it would split it.
    pub fn down_grace(mut self, grace: Duration) -> Self {
        self.config.down_grace = Some(grace);
        self
    }

    /// How many backends a placed request (a conversation start, a keyless call, an operator
    /// key bound afresh) may be tried on before it is refused with
    /// [`Reason::NoReadyBackend`](super::Reason::NoReadyBackend), when the embedder reports that it could not deliver it
    /// (see [`Router::on_undelivered`]); default 3, at least 1.
    pub fn placement_attempts(mut self, attempts: usize) -> Self {
        self.config.placement_attempts = attempts.max(1);
        self
    }

    /// Seconds in `Retry-After` on 503 rejections (default 1).
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.config.retry_after = seconds;
        self
    }

    /// Opt-in cookie fallback: conversation starts placed by the router set a cookie of this
    /// name naming their backend, and a request carrying no key but this cookie goes to that
    /// backend while it is ready (for clients with cookie jars: browsers, Python clients); a
    /// cookie naming a backend that is gone or not ready is ignored and the request placed.
    /// Off by default.
    pub fn affinity_cookie(mut self, name: &str) -> Self {
        self.config.cookie = Some(name.into());
        self
    }

    /// Finds each request's tenant (default: every request is [`TenantId::DEFAULT`](crate::TenantId::DEFAULT)).
    pub fn tenant(mut self, extractor: impl TenantExtractor) -> Self {
        self.config.tenant = Some(Box::new(extractor));
        self
    }

    /// Extracts an operator-defined key from requests without a protocol key (see
    /// [`KeyExtractor`] for the trade-off). Off by default.
    pub fn operator_key(mut self, extractor: impl KeyExtractor) -> Self {
        self.config.operator = Some(Box::new(extractor));
        self
    }

    /// Whose operator keys are whose when principals are bound (default
    /// [`OperatorScope::Principal`]: each principal has its own namespace of operator keys).
    pub fn operator_scope(mut self, scope: OperatorScope) -> Self {
        self.config.operator_scope = scope;
        self
    }

    /// Binds keys to the principal that learned them (see [`PrincipalExtractor`]). Off by
    /// default.
    pub fn principal(mut self, extractor: impl PrincipalExtractor) -> Self {
        self.config.principal = Some(Box::new(extractor));
        self
    }

    /// Replaces rejection bodies: `body(&rejection)` returns the `Content-Type` and the body
    /// to send, or `None` for the default ones (a JSON-RPC error for a lost legacy session,
    /// plain text otherwise: see [`Rejection`]). Status and `Retry-After` stay the router's.
    pub fn rejection_body(
        mut self,
        body: impl Fn(&Rejection) -> Option<(http::HeaderValue, Bytes)> + Send + Sync + 'static,
    ) -> Self {
        self.config.rejection_body = Some(Box::new(body));
        self
    }

    /// Seals the session ids backends mint (Streamable HTTP and legacy SSE) into tokens that
    /// carry their owner, so that a fleet of routers holding the same keys needs no shared
    /// state (see [`Sealing`](super::Sealing) and [`crate::seal`]). Off by default: there is
    /// no default key.
    #[cfg(feature = "seal")]
    #[cfg_attr(docsrs, doc(cfg(feature = "seal")))]
    pub fn sealing(mut self, sealing: super::Sealing) -> Self {
        self.config.sealing = Some(sealing);
        self
    }

    /// Shares learned keys with the other routers of a fleet through a store (see
    /// [`store`](super::store) for the protocol the embedder drives, and the
    /// `mcp-affinity-redis` crate for Redis). Off by default.
    ///
    /// [`build`](RouterBuilder::build) aligns the table's clock on the store's wall clock
    /// ([`SessionTable::align_clock`]), which a [`MemoryTable`] takes only before its first
    /// use: give the router a fresh table. One already used (filled beforehand, or kept from
    /// a router built before) keeps its own 100 ms grid, and a key learned within 100 ms of a
    /// second's start may be dated in the second before (a loss of that second then drops
    /// it here, and it is looked up again; written back, its binding reads a second early).
    pub fn shared_store(mut self, store: super::SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The router.
    pub fn build(self) -> Router<T>
    where
        T: SessionTable,
    {
        let idle_ttl = self.table.idle_ttl();
        if let Some(store) = &self.store {
            self.table.align_clock(store.clock().anchor());
        }
        Router {
            table: self.table,
            fleet: Fleet::new(self.max_backends, self.unhealthy_after, self.healthy_after),
            counters: Counters::default(),
            purges: Mutex::new(Default::default()),
            purge_lock: Mutex::new(()),
            store: self
                .store
                .map(|store| super::store::StoreState::new(store, idle_ttl)),
            config: self.config,
        }
    }
}

impl<T> fmt::Debug for RouterBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("paths", &self.config.paths)
            .field("placement", &self.config.placement)
            .finish_non_exhaustive()
    }
}
