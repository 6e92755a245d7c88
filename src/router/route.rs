//! Step 1 of the call protocol: a request head becomes a pinned or placed exchange, or a
//! rejection; and a request that could not be delivered becomes a new decision.

use std::time::Instant;

use http::header::COOKIE;
use http::request;

use super::classify::{Intent, classify};
use super::exchange::{Exchange, How, IdBuf, Routed, Undelivered};
use super::fleet::{OwnerStatus, Placement, Probe};
use super::reject::{Reason, Rejection};
use super::seal::{self, Presented};
use super::{OperatorScope, Router};
use crate::table::{Entry, Key, KeyKind, Principal, SessionTable};
use crate::{BackendId, TenantId};

/// `p` and 16 hex digits of the principal's fingerprint, then `.`: the prefix of an operator
/// key scoped by principal. The anonymous principal's prefix is `a.`.
pub(super) const PRINCIPAL_PREFIX_LEN: usize = 18;

/// Who asks where a request goes: its tenant, intent and principal.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ask {
    pub(super) tenant: TenantId,
    pub(super) intent: Intent,
    pub(super) principal: Option<Principal>,
}

/// What routes a request once the keys it carries passed: the key it is routed by, an
/// operator key, or placement (with the affinity cookie's hint). Borrowed while routing;
/// owned while the request waits for the store's word on a carried key.
#[derive(Debug)]
pub(super) enum Next<I> {
    Key(KeyKind, I),
    Operator(I),
    Place { cookie: Option<BackendId> },
}

impl Next<&[u8]> {
    fn to_owned(&self) -> Next<IdBuf> {
        match *self {
            Next::Key(kind, id) => Next::Key(kind, IdBuf::new(id)),
            Next::Operator(id) => Next::Operator(IdBuf::new(id)),
            Next::Place { cookie } => Next::Place { cookie },
        }
    }
}

impl Next<IdBuf> {
    pub(super) fn as_ref(&self) -> Next<&[u8]> {
        match self {
            Next::Key(kind, id) => Next::Key(*kind, id.as_bytes()),
            Next::Operator(id) => Next::Operator(id.as_bytes()),
            Next::Place { cookie } => Next::Place { cookie: *cookie },
        }
    }
}

/// The verdict on a carried key.
enum Carry {
    Passes,
    Refused(Reason),
    /// Only the shared store can tell.
    Ask(super::store::Lookup),
}

impl<T: SessionTable> Router<T> {
    /// Decides where a request goes: see the [call protocol](Router#the-call-protocol).
    ///
    /// `req` is the head as the backend will get it: with the hop-by-hop headers, and those its
    /// `Connection` header names, already removed (a session header the hop removes after
    /// routing would pin the request to a session its backend is never told of).
    pub fn route(&self, req: &request::Parts, now: Instant) -> Routed {
        self.route_with(req, now, |_| true)
    }

    /// [`route`](Router::route), where `accept` may veto a placement choice (for example a
    /// backend whose connection pool is exhausted): the next candidate of the policy is tried,
    /// and if every ready backend is vetoed the request is rejected with
    /// [`Reason::NoReadyBackend`]. Pinned requests are never offered to `accept`: their owner
    /// is the only backend that can serve them.
    ///
    /// The first choice costs what [`route`](Router::route) costs; once it is vetoed, the
    /// other ready backends are ranked once, in O(n log n) for a fleet of n.
    pub fn route_with(
        &self,
        req: &request::Parts,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let tenant = match &self.config.tenant {
            None => Some(TenantId::DEFAULT),
            Some(extractor) => extractor.tenant(req),
        };
        match tenant {
            Some(tenant) => self.route_in(tenant, req, now, accept),
            None => self.traced(None, Routed::Reject(self.reject(Reason::UnknownTenant))),
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
        self.traced(Some(tenant), self.decide(tenant, req, now, accept))
    }

    /// A rejection's `tracing` event (feature `tracing`): warn for what an operator must act
    /// on (capacity, availability, conflicting backends), debug for the rest.
    #[inline]
    pub(super) fn traced(&self, tenant: Option<TenantId>, routed: Routed) -> Routed {
        if let Routed::Reject(rejection) = &routed {
            self.trace_rejection(tenant, rejection);
        }
        routed
    }

    /// See [`traced`](Router::traced).
    #[inline]
    pub(super) fn trace_rejection(&self, tenant: Option<TenantId>, rejection: &Rejection) {
        #[cfg(feature = "tracing")]
        {
            let (reason, status) = (rejection.reason(), rejection.status().as_u16());
            let tenant = tenant.map(TenantId::get);
            match reason {
                Reason::TableFull(_)
                | Reason::NoReadyBackend
                | Reason::StoreUnavailable(_)
                | Reason::OwnerUnreachable(_)
                | Reason::KeyConflict(_) => {
                    event!(
                        warn,
                        reason = reason.as_str(),
                        status,
                        tenant,
                        "request rejected"
                    );
                }
                _ => event!(
                    debug,
                    reason = reason.as_str(),
                    status,
                    tenant,
                    "request rejected"
                ),
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (tenant, rejection);
    }

    fn decide(
        &self,
        tenant: TenantId,
        req: &request::Parts,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        // Read in place: a copy of the class out of the result reads it back in wider pieces
        // than `classify` wrote them (a store-forwarding stall: 4% of a decision).
        let classified = classify(req, &self.config.paths);
        let class = match &classified {
            Ok(class) => class,
            Err(reason) => return Routed::Reject(self.reject(*reason)),
        };
        let principal = self
            .config
            .principal
            .as_ref()
            .and_then(|p| p.principal(req));
        let next = match &class.key {
            Some((kind, id)) => Next::Key(*kind, &id[..]),
            None => match self.config.operator.as_ref().and_then(|op| op.key(req)) {
                Some(id) => Next::Operator(id),
                None => Next::Place {
                    cookie: self.cookie_hint(req),
                },
            },
        };
        let ask = Ask {
            tenant,
            intent: class.intent,
            principal,
        };
        if self.config.principal.is_some() {
            self.route_checked(ask, class.carried.keys(), next, now, accept)
        } else {
            self.route_next(ask, next, now, accept)
        }
    }

    /// Checks the keys a request carries without being routed by them (with principal
    /// binding on), then routes it by `next`. A carried key that only the shared store may
    /// know is looked up first: the lookup carries the keys still to check and `next`, and
    /// [`on_lookup`](Router::on_lookup) goes on from there.
    pub(super) fn route_checked<'k>(
        &self,
        ask: Ask,
        mut carried: impl Iterator<Item = (KeyKind, &'k [u8])>,
        next: Next<&[u8]>,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        while let Some((kind, id)) = carried.next() {
            match self.check_carried(ask, kind, id, now) {
                Carry::Passes => {}
                Carry::Refused(reason) => return Routed::Reject(self.reject(reason)),
                Carry::Ask(lookup) => {
                    let carried = carried.map(|(kind, id)| (kind, IdBuf::new(id))).collect();
                    return Routed::Lookup(lookup.then(carried, next.to_owned()));
                }
            }
        }
        self.route_next(ask, next, now, accept)
    }

    /// Routes a request whose carried keys passed by what routes it.
    fn route_next(
        &self,
        ask: Ask,
        next: Next<&[u8]>,
        now: Instant,
        mut accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let Ask {
            tenant,
            intent,
            principal,
        } = ask;
        let cookie = match next {
            Next::Key(kind, id) => return self.route_key(tenant, kind, id, intent, principal, now),
            Next::Operator(id) => {
                return self.route_operator(tenant, id, intent, principal, now, accept);
            }
            Next::Place { cookie } => cookie,
        };
        let mut vetoed = None;
        // A hint toward a ready backend (judged now: the request may have waited for the
        // store), offered to the veto like any placement choice (and once only).
        if let Some(backend) = cookie.filter(|&id| self.fleet.is_ready_in(id, tenant)) {
            if accept(backend) {
                self.counters.incr(|s| &s.placed);
                let mut exchange = Exchange::new(tenant, backend, How::Placed, intent, principal);
                exchange.term = self.fleet.term(backend);
                // A conversation start counts on its backend until answered, as a placed one
                // does: the least-sessions policy must see it.
                if intent.starts_conversation()
                    && self.config.placement != Placement::WeightedRoundRobin
                {
                    exchange.pending = self.fleet.start_pending(backend);
                }
                return Routed::Forward(exchange);
            }
            self.counters.incr(|s| &s.vetoed);
            vetoed = Some(backend);
        }
        let exchange = Exchange::new(tenant, BackendId::CONTESTED, How::Placed, intent, principal);
        self.place(exchange, vetoed, accept)
    }

    /// A key the request carries without being routed by it, with principal binding on: it
    /// passes only if it is the principal's own (a token sealed for it, or a key the table
    /// holds under it, or, with a shared store, one the store binds to it). Known under
    /// another principal, the request is refused as a hijack would be; unknown (or in a
    /// spelling the router cannot tell from another: decoded, case, braces), it is refused as
    /// unknown, since a backend may still read it as some session's.
    fn check_carried(&self, ask: Ask, kind: KeyKind, id: &[u8], now: Instant) -> Carry {
        if self.carries_own_token(ask.tenant, kind, id, ask.principal) {
            return Carry::Passes;
        }
        let Ok(key) = Key::with_max_len(ask.tenant, kind, id, self.config.max_key_len) else {
            return Carry::Refused(Reason::UnknownKey(kind));
        };
        Carry::Refused(match self.table.get(&key, now) {
            Some(entry) if entry.owner == BackendId::CONTESTED => Reason::UnknownKey(kind),
            Some(entry) if entry.principal == ask.principal => return Carry::Passes,
            Some(_) => Reason::WrongPrincipal(kind),
            None => match self.lookup(&key, ask.intent, ask.principal) {
                Some(lookup) => return Carry::Ask(lookup),
                None => Reason::UnknownKey(kind),
            },
        })
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
        if id.len() <= seal::presented_bound(self.config.max_key_len) {
            if let Presented::Routed(routed) =
                self.route_sealed(tenant, kind, id, intent, principal, now)
            {
                return routed;
            }
        }
        let key = match Key::with_max_len(tenant, kind, id, self.config.max_key_len) {
            Ok(key) => key,
            Err(why) => {
                let reason = match self.unknown_presented(kind) {
                    Reason::UnknownKey(_) => Reason::InvalidKey(kind, why),
                    sealed => sealed,
                };
                return Routed::Reject(self.reject(reason));
            }
        };
        match self.table.get(&key, now) {
            Some(entry) => self.forward_owned(&key, entry, intent, principal, now),
            None => match self.lookup(&key, intent, principal) {
                Some(lookup) => Routed::Lookup(lookup),
                None => Routed::Reject(self.reject(self.unknown_presented(kind))),
            },
        }
    }

    /// An operator key: pinned to its owner if it has a live one, else placed, to be bound to
    /// the backend that answers it 2xx.
    fn route_operator(
        &self,
        tenant: TenantId,
        id: &[u8],
        intent: Intent,
        principal: Option<Principal>,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        if let Err(why) = Key::with_max_len(tenant, KeyKind::Operator, id, self.config.max_key_len)
        {
            return Routed::Reject(self.reject(Reason::InvalidKey(KeyKind::Operator, why)));
        }
        let scoped = if self.config.scoped_operator_keys() {
            match principal {
                Some(p) => {
                    let mut prefix = [0u8; PRINCIPAL_PREFIX_LEN];
                    prefix[0] = b'p';
                    hex16(p.fingerprint(), &mut prefix[1..17]);
                    prefix[17] = b'.';
                    IdBuf::prefixed(&prefix, id)
                }
                None => IdBuf::prefixed(b"a.", id),
            }
        } else {
            IdBuf::new(id)
        };
        let key = Key::with_max_len(
            tenant,
            KeyKind::Operator,
            scoped.as_bytes(),
            self.config.key_bound(KeyKind::Operator),
        )
        .expect("a valid id with a visible-ASCII prefix is valid");
        if let Some(entry) = self.table.get(&key, now) {
            let live = entry.owner != BackendId::CONTESTED
                && self.fleet.owner_status(entry.owner, now) == OwnerStatus::Live;
            if live {
                return self.forward_owned(&key, entry, intent, principal, now);
            }
            // A client cannot start an operator key over: when its owner is gone, the key is
            // bound afresh, as on its first request.
            self.purge_key(&key, entry.owner);
        }
        // With a store, where the fleet agrees: another router may have bound it (afresh).
        if let Some(lookup) = self.lookup(&key, intent, principal) {
            return Routed::Lookup(lookup);
        }
        let mut exchange =
            Exchange::new(tenant, BackendId::CONTESTED, How::Placed, intent, principal);
        exchange.bind_operator = Some(Box::new(scoped));
        self.place(exchange, None, accept)
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
        if entry.owner == BackendId::CONTESTED {
            // Two backends minted this id: neither is asked to serve it.
            return Routed::Reject(self.reject(Reason::UnknownKey(kind)));
        }
        if self.foreign_principal(kind, entry.principal, principal) {
            return Routed::Reject(self.reject(Reason::WrongPrincipal(kind)));
        }
        let (status, term) = self.fleet.owner_state(entry.owner, now);
        let Some(reason) = status.refusal(kind) else {
            let routed_by = (kind, IdBuf::new(key.id_bytes()));
            let (tenant, owner) = (key.tenant(), entry.owner);
            return Routed::Forward(self.pin(tenant, owner, term, routed_by, intent, principal));
        };
        if self.table.remove(key, Some(entry.owner)).is_some() {
            match status {
                OwnerStatus::Revoked => self.counters.incr(|s| &s.revoked),
                _ => self.counters.incr(|s| &s.purged),
            }
        }
        Routed::Reject(self.reject(reason))
    }

    /// An exchange pinned by `key` to `owner`, live in the term `term`, and counted. (Inlined:
    /// the 208-byte exchange is built where it is returned, not copied on the way.)
    #[inline]
    pub(super) fn pin(
        &self,
        tenant: TenantId,
        owner: BackendId,
        term: u32,
        key: (KeyKind, IdBuf),
        intent: Intent,
        principal: Option<Principal>,
    ) -> Exchange {
        self.counters.incr(|s| &s.pinned);
        Exchange::pinned(tenant, owner, term, key, intent, principal)
    }

    /// Whether a key of `kind` bound under `bound` is presented by another principal, which
    /// the router refuses when it binds principals (an operator key of the shared scope is
    /// anyone's).
    pub(super) fn foreign_principal(
        &self,
        kind: KeyKind,
        bound: Option<Principal>,
        presented: Option<Principal>,
    ) -> bool {
        let shared =
            kind == KeyKind::Operator && self.config.operator_scope == OperatorScope::Shared;
        self.config.principal.is_some() && !shared && bound != presented
    }

    /// Places a request on a ready backend of its tenant, skipping those it was already tried
    /// on and `vetoed` (already offered to `accept`); `exchange` carries everything but the
    /// backend.
    pub(super) fn place(
        &self,
        mut exchange: Exchange,
        vetoed: Option<BackendId>,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        // Sessions are balanced by the policy; stateless calls, which leave nothing behind to
        // balance, take turns.
        let starts = exchange.intent.starts_conversation() || exchange.bind_operator.is_some();
        let policy = if starts {
            self.config.placement
        } else {
            Placement::WeightedRoundRobin
        };
        let tried = &exchange.tried;
        let Some(backend) = self.choose(exchange.tenant, policy, tried, vetoed, accept) else {
            return Routed::Reject(self.reject(Reason::NoReadyBackend));
        };
        self.counters.incr(|s| &s.placed);
        exchange.backend = backend;
        exchange.term = self.fleet.term(backend);
        exchange.how = How::Placed;
        if policy != Placement::WeightedRoundRobin {
            exchange.pending = self.fleet.start_pending(backend);
        }
        exchange.set_cookie = self.config.cookie.is_some() && exchange.intent.starts_conversation();
        Routed::Forward(exchange)
    }

    /// The policy's first choice that `accept` takes, never one of `tried`, and each backend
    /// offered once (`vetoed` was already). The fleet lock is not held while `accept` runs,
    /// so it may call back into the router. The first choice allocates nothing; past it, the
    /// ready backends are ranked once.
    fn choose(
        &self,
        tenant: TenantId,
        policy: Placement,
        tried: &[BackendId],
        vetoed: Option<BackendId>,
        mut accept: impl FnMut(BackendId) -> bool,
    ) -> Option<BackendId> {
        let mut offered = [vetoed, None];
        if tried.is_empty() {
            let first = self.fleet.pick(tenant, policy, &self.table)?;
            if Some(first) != vetoed {
                if accept(first) {
                    return Some(first);
                }
                self.counters.incr(|s| &s.vetoed);
                offered[1] = Some(first);
            }
        }
        for id in self.fleet.ranked(tenant, policy, &self.table) {
            if offered.contains(&Some(id)) || tried.contains(&id) {
                continue;
            }
            if accept(id) {
                return Some(id);
            }
            self.counters.incr(|s| &s.vetoed);
        }
        None
    }

    /// The backend named by the request's affinity cookie, if the fallback is on and the
    /// cookie is well formed; [`route_next`](Router::route_next) takes it only if it names a
    /// ready backend of the tenant. Anything else (no cookie, a malformed one, a backend gone,
    /// draining, unhealthy or of another tenant) is no hint at all: the request is placed like
    /// any keyless request, and a conversation start gets a fresh cookie. A client can name
    /// any ready backend of its tenant this way, which is no more than placement could have
    /// given it.
    fn cookie_hint(&self, req: &request::Parts) -> Option<BackendId> {
        let name = self.config.cookie.as_deref()?;
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
        Some(BackendId::new(slot.parse().ok()?, generation.parse().ok()?))
    }

    /// Forgets `key` if `owner` still holds it (a key whose owner is gone, down or replaced),
    /// counted as purged; whether it did.
    pub(super) fn purge_key(&self, key: &Key<'_>, owner: BackendId) -> bool {
        let purged = self.table.remove(key, Some(owner)).is_some();
        if purged {
            self.counters.incr(|s| &s.purged);
        }
        purged
    }

    pub(super) fn reject(&self, reason: Reason) -> Rejection {
        self.counters.incr(|s| &s.rejected[reason.index()]);
        let rejection = Rejection::new(reason, self.config.retry_after);
        match &self.config.rejection_body {
            Some(body) => {
                let custom = body(&rejection);
                rejection.with_custom(custom)
            }
            None => rejection,
        }
    }

    /// The request of `exchange` could not be delivered to [`Exchange::backend`]: nothing of
    /// it was written. Returns what to do now.
    ///
    /// - The backend's health learns from it: a [refused](Undelivered::Refused) connection
    ///   declares it **down** at once (its sessions died with its process: every key it owns
    ///   is answered [`OwnerDown`](Reason::OwnerDown), 404, and purged); a
    ///   [timeout](Undelivered::TimedOut) or [other failure](Undelivered::Failed) counts as
    ///   one failed [`Probe`].
    /// - A request **pinned** by a session or task key is never moved: it gets
    ///   [`OwnerDown`](Reason::OwnerDown) (404, start over) when the owner refused, and
    ///   [`OwnerUnreachable`](Reason::OwnerUnreachable) (503 + `Retry-After`) when it may
    ///   still hold the session.
    /// - A **placed** request (a conversation start, a 2026-07-28 call, an operator key's
    ///   first request, a cookie hint) is placed again on another ready backend, never one it
    ///   was already tried on, within
    ///   [`placement_attempts`](super::RouterBuilder::placement_attempts); when none is left
    ///   it gets [`NoReadyBackend`](Reason::NoReadyBackend) (503 + `Retry-After`).
    pub fn on_undelivered(&self, exchange: Exchange, why: Undelivered, now: Instant) -> Routed {
        self.on_undelivered_with(exchange, why, now, |_| true)
    }

    /// [`on_undelivered`](Router::on_undelivered), where `accept` may veto the next placement
    /// choice, as in [`route_with`](Router::route_with).
    pub fn on_undelivered_with(
        &self,
        exchange: Exchange,
        why: Undelivered,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        let tenant = exchange.tenant;
        let routed = self.redecide(exchange, why, now, accept);
        self.traced(Some(tenant), routed)
    }

    fn redecide(
        &self,
        mut exchange: Exchange,
        why: Undelivered,
        now: Instant,
        accept: impl FnMut(BackendId) -> bool,
    ) -> Routed {
        // Whatever a response may have made it hold (an embedder that reports a failure
        // after a response head) is let go first.
        self.release(&mut exchange, now);
        let backend = exchange.backend;
        // A report from an exchange of an older term speaks for a process long gone.
        let current = self.fleet.term(backend) == exchange.term;
        match why {
            Undelivered::Refused => self.declare_down(backend, exchange.term, now),
            Undelivered::TimedOut | Undelivered::Failed if current => {
                let _ = self.report_health(backend, Probe::Failed, now);
            }
            Undelivered::TimedOut | Undelivered::Failed => {}
        }
        match exchange.key.as_ref().map(|(kind, _)| *kind) {
            // An operator key's owner that is only slow keeps the key: it still holds the
            // workspace's state.
            Some(KeyKind::Operator) if why != Undelivered::Refused => {
                Routed::Reject(self.reject(Reason::OwnerUnreachable(KeyKind::Operator)))
            }
            Some(kind) if kind != KeyKind::Operator => {
                let reason = match (why, self.fleet.owner_status(backend, now)) {
                    (Undelivered::Refused, _) | (_, OwnerStatus::Down) => Reason::OwnerDown(kind),
                    _ => Reason::OwnerUnreachable(kind),
                };
                if let Some(key) = exchange
                    .routed_key()
                    .filter(|_| reason == Reason::OwnerDown(kind))
                {
                    self.purge_key(&key, backend);
                }
                Routed::Reject(self.reject(reason))
            }
            // No key, or an operator key whose owner refused the connection.
            _ => {
                // Nothing was sent: safe to place anywhere else. An operator key is bound
                // afresh, as when its owner is gone.
                if let Some((kind, id)) = exchange.key.take() {
                    self.purge_key(&exchange.key_of(kind, &id), backend);
                    exchange.bind_operator = Some(Box::new(id));
                }
                exchange.pending = None;
                exchange.tried.push(backend);
                if exchange.tried.len() >= self.config.placement_attempts {
                    return Routed::Reject(self.reject(Reason::NoReadyBackend));
                }
                self.counters.incr(|s| &s.retried);
                self.place(exchange, None, accept)
            }
        }
    }
}

/// Writes `n` as 16 lowercase hex digits.
fn hex16(n: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate().take(16) {
        *byte = HEX[((n >> (60 - 4 * i)) & 0xF) as usize];
    }
}
