//! Steps 2 to 4 of the call protocol: what the router learns and forgets from a response's
//! head and body, and what an exchange releases when it ends.

use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, SET_COOKIE};
use http::{StatusCode, response};

use super::classify::{Intent, SESSION_HEADER};
use super::edit::{HeadEdit, HeadEdits};
use super::exchange::{ChunkOutcome, Data, End, Exchange, HeadOutcome, Hold, IdBuf};
use super::fleet::OwnerStatus;
use super::observe::{Observer, Seen};
use super::reject::Reason;
use super::seal::splice_endpoint;
use super::store::Shared;
use super::{Router, content_type_is, identity_encoded};
use crate::BackendId;
use crate::table::{Insert, InsertError, Key, KeyKind, Scope, SessionTable, SetOwnerError};

/// How learning a key a backend revealed went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Learned {
    /// Bound to the backend (or already was).
    Bound,
    /// Not an id this router can route by (too long, or not visible ASCII).
    Unroutable,
    /// Another backend owns it (or two did already: [`BackendId::CONTESTED`]).
    Conflict(BackendId),
    /// The table is full.
    Full(Scope),
    /// The table stores nothing.
    Refused,
    /// The backend that revealed it is removed or down: its keys are not kept.
    OwnerGone,
    /// Not kept: its binding could not be queued for the shared store.
    Unshared,
}

impl<T: SessionTable> Router<T> {
    /// Learns and forgets from a response head, and says whether to observe its body: see the
    /// [call protocol](Router#the-call-protocol). May change the head: add a `Set-Cookie`
    /// header (affinity cookie fallback), put the client's sealed token in place of a minted
    /// `Mcp-Session-Id`, and remove `Content-Length` from a body it will rewrite
    /// ([`HeadOutcome::Rewrite`]); [`on_response_head_edits`](Router::on_response_head_edits)
    /// returns the same changes instead of making them.
    pub fn on_response_head(
        &self,
        exchange: &mut Exchange,
        response: &mut response::Parts,
        now: Instant,
    ) -> HeadOutcome {
        // (The edits are made here, not returned: the inline list is a few hundred bytes.)
        let mut edits = HeadEdits::default();
        let outcome = self.head_traced(
            exchange,
            response.status,
            &response.headers,
            &mut edits,
            now,
        );
        edits.apply_to_response(response);
        outcome
    }

    /// [`on_response_head`](Router::on_response_head) for an embedder whose response head is
    /// not `http::response::Parts` (pingora's `ResponseHeader` changes only through its own
    /// methods): the router reads the status and headers, and returns the changes to make to
    /// the headers (an affinity cookie, a sealed session id, a `Content-Length` dropped before a
    /// rewritten body) instead of making them. Make them before the head goes on; for a
    /// [`HeadOutcome::Replace`] the head does not go on at all.
    pub fn on_response_head_edits(
        &self,
        exchange: &mut Exchange,
        status: StatusCode,
        headers: &HeaderMap,
        now: Instant,
    ) -> (HeadOutcome, HeadEdits) {
        let mut edits = HeadEdits::default();
        let outcome = self.head_traced(exchange, status, headers, &mut edits, now);
        (outcome, edits)
    }

    /// [`head`](Router::head), its rejection traced.
    fn head_traced(
        &self,
        exchange: &mut Exchange,
        status: StatusCode,
        headers: &HeaderMap,
        edits: &mut HeadEdits,
        now: Instant,
    ) -> HeadOutcome {
        let outcome = self.head(exchange, status, headers, edits, now);
        if let HeadOutcome::Replace(rejection) = &outcome {
            self.trace_rejection(Some(exchange.tenant), rejection);
        }
        outcome
    }

    /// The work of [`on_response_head_edits`](Router::on_response_head_edits). Every read is
    /// of the head as the backend sent it: no edit changes a header that a later step reads.
    fn head(
        &self,
        exchange: &mut Exchange,
        status: StatusCode,
        headers: &HeaderMap,
        edits: &mut HeadEdits,
        now: Instant,
    ) -> HeadOutcome {
        let ok = status.is_success();
        // The conversation start was answered: it no longer weighs on its backend's load.
        exchange.pending = None;
        if let Some(id) = exchange.bind_operator.take() {
            if ok {
                // The call already ran: a binding that fails is counted, never turned into an
                // error the client would retry (and repeat a call that was not idempotent).
                let _ = self.learn(exchange, KeyKind::Operator, id.as_bytes(), false, now);
            }
        }
        if exchange.set_cookie && ok {
            if let Some(name) = &self.config.cookie {
                let id = exchange.backend;
                let cookie = format!(
                    "{name}={}.{}; Path=/; HttpOnly; SameSite=Lax",
                    id.slot(),
                    id.generation()
                );
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    edits.push(HeadEdit::Append(SET_COOKIE, value));
                }
            }
        }
        if exchange.token.is_some() {
            self.reseal_echo(exchange, ok, headers, edits, now);
        } else if self.seals()
            && headers.contains_key(&SESSION_HEADER)
            && !(ok && matches!(exchange.intent, Intent::SessionStart { .. }))
        {
            // An answer that names an id nothing seals (a failed conversation start, a call
            // routed without a session): a client must not adopt the backend's own id (the
            // TypeScript SDK takes it from any answer). A 2xx start's id is sealed below.
            edits.push(HeadEdit::Remove(SESSION_HEADER));
        }
        let max_observe = self.config.max_observe;
        match exchange.intent {
            intent if ok && intent.reads_body() && !identity_encoded(headers) => {
                // A compressed body cannot be read for its key (proxies should not ask
                // backends for compression on these paths): counted, not observed.
                self.counters.incr(|s| &s.encoded);
                if intent == Intent::SseConnect
                    && self.seals()
                    && content_type_is(headers, "text/event-stream")
                {
                    // Nor can its endpoint be sealed: the client would get the backend's own
                    // id, which every router refuses.
                    let reason = Reason::UnroutableKey(KeyKind::SseSession);
                    return HeadOutcome::Replace(self.reject(reason));
                }
                HeadOutcome::Forward
            }
            Intent::SseConnect if ok && content_type_is(headers, "text/event-stream") => {
                // With sealed ids the endpoint event is held and rewritten; otherwise only read.
                let seals = self.seals();
                exchange.observer = Some(Box::new(Observer::endpoint(max_observe, seals)));
                exchange.rewriting = seals;
                self.counters.incr(|s| &s.observed);
                if seals {
                    // The body's length changes.
                    edits.push(HeadEdit::Remove(http::header::CONTENT_LENGTH));
                    HeadOutcome::Rewrite
                } else {
                    HeadOutcome::Observe
                }
            }
            Intent::SessionStart { .. } if ok => {
                let mut ids = headers.get_all(&SESSION_HEADER).iter();
                match (ids.next(), ids.next()) {
                    (Some(id), None) => self.session_started(exchange, id.as_bytes(), edits, now),
                    (None, _) => HeadOutcome::Forward,
                    // Two ids: which one a client adopts is its HTTP library's choice (the
                    // first, the last, or both joined by a comma), so neither is learned, and
                    // the client is told the start failed, as for a request that names two.
                    (Some(_), Some(_)) => {
                        self.counters.incr(|s| &s.unlearned);
                        HeadOutcome::Replace(self.reject(Reason::UnroutableKey(KeyKind::Session)))
                    }
                }
            }
            Intent::SessionPost
            | Intent::SessionStream
            | Intent::SessionDelete
            | Intent::SseMessage => {
                self.session_response(exchange, status, headers, now);
                HeadOutcome::Forward
            }
            #[cfg(feature = "tasks")]
            Intent::ModernCall {
                may_create_task: true,
            } if ok => {
                let observer = if content_type_is(headers, "application/json") {
                    let expected = headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    Observer::task_json(expected, max_observe)
                } else if content_type_is(headers, "text/event-stream") {
                    Observer::task_events(max_observe)
                } else {
                    return HeadOutcome::Forward;
                };
                exchange.observer = Some(Box::new(observer));
                self.counters.incr(|s| &s.observed);
                HeadOutcome::Observe
            }
            _ => HeadOutcome::Forward,
        }
    }

    /// A 2xx answer to a conversation start that minted session `id`: the session is
    /// learned, or sealed into the id the client gets.
    fn session_started(
        &self,
        exchange: &mut Exchange,
        id: &[u8],
        edits: &mut HeadEdits,
        now: Instant,
    ) -> HeadOutcome {
        match self.seal_minted(exchange, KeyKind::Session, id, now) {
            Ok(None) => {
                let learned = self.learn(exchange, KeyKind::Session, id, false, now);
                self.learned_head(learned, KeyKind::Session)
            }
            Ok(Some(token)) => {
                let token = HeaderValue::from_maybe_shared(token)
                    .expect("base64url is a valid header value");
                edits.push(HeadEdit::Insert(SESSION_HEADER, token));
                HeadOutcome::Forward
            }
            Err(Reason::UnroutableKey(kind)) => {
                self.counters.incr(|s| &s.unlearned);
                HeadOutcome::Replace(self.reject(Reason::UnroutableKey(kind)))
            }
            Err(_) => {
                // Its backend was removed or went down meanwhile: nothing to seal for. Not
                // forwarded: without an id the client would go on without a session, and
                // with the backend's own it would be refused; it retries instead.
                self.counters.incr(|s| &s.unlearned);
                HeadOutcome::Replace(self.reject(Reason::UnroutableKey(KeyKind::Session)))
            }
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
        // A 404 ends the session only when the router vouches for whose request it was: a
        // backend that checks principals itself answers a stranger who knows the id with 404
        // too, and that must not end the rightful client's session. Without principal binding
        // the binding stays (the backend answers 404 again; the key expires when idle).
        //
        // A legacy SSE binding that a stream still carries is not forgotten at all: it ends
        // with its stream, and an id forgotten while a client's stream holds it could be
        // minted again for another client. It goes when its streams end (or idles out). A
        // streamable session the backend ended goes now: its streams end with it (a client's
        // DELETE usually overtakes the close of its standalone GET stream).
        let vouched = self.config.principal.is_some();
        let ended = (status == StatusCode::NOT_FOUND && vouched)
            || (exchange.intent == Intent::SessionDelete && status.is_success());
        if ended {
            let streaming = key.kind() == KeyKind::SseSession
                && self.table.get(&key, now).is_some_and(|e| e.streams > 0);
            if !streaming && self.table.remove(&key, Some(exchange.backend)).is_some() {
                event!(debug, tenant = exchange.tenant.get(), kind = key.kind().as_str(), backend = %exchange.backend, status = status.as_u16(), "key forgotten: the conversation ended");
                self.counters.incr(|s| &s.forgotten);
                self.store_forgotten(&key, exchange.backend);
            }
            return;
        }
        // (An answer to a sealed request had its echo sealed already.)
        if key.kind() == KeyKind::Session && exchange.token.is_none() {
            // (Found by walking the answer's few headers: `HeaderMap` would hash the name byte
            // by byte.)
            if let Some((_, id)) = headers.iter().find(|(name, _)| *name == SESSION_HEADER) {
                if id.as_bytes() != key.id_bytes() {
                    // Another id for an existing session: not learned.
                    self.counters.incr(|s| &s.id_mismatches);
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
    ///
    /// Only a live backend's keys are kept: one removed or down while its answer was on the
    /// way would leave a key no purge will find, so the owner is checked before the key goes
    /// in and again after (if it changed in between, the key is taken out again).
    fn learn(
        &self,
        exchange: &mut Exchange,
        kind: KeyKind,
        id: &[u8],
        stream: bool,
        now: Instant,
    ) -> Learned {
        let Ok(key) = Key::with_max_len(exchange.tenant, kind, id, self.config.key_bound(kind))
        else {
            self.counters.incr(|s| &s.unlearned);
            return Learned::Unroutable;
        };
        let (backend, principal) = (exchange.backend, exchange.principal);
        // Only the term the exchange was routed in: an answer that outlived it (its backend
        // removed, down, revoked or replaced meanwhile, even by a slot's wrapped generation)
        // binds nothing.
        let live = || self.fleet.live_in(backend, exchange.term, now);
        if !live() {
            self.counters.incr(|s| &s.unlearned);
            return Learned::OwnerGone;
        }
        let insert = || {
            if stream {
                self.table.insert_streaming(&key, backend, principal, now)
            } else {
                self.table.insert(&key, backend, principal, now)
            }
        };
        let mut inserted = insert();
        if let Ok(Insert::Exists(stale)) = inserted {
            // The id is held for an owner that is gone, down or revoked (its keys await their
            // purge): the backend that minted it now is its owner, unless a stream of the old
            // owner still carries it (its client would be pinned to the new owner: contested
            // instead). A contested id stays contested.
            let dead = stale.owner != BackendId::CONTESTED
                && stale.owner != backend
                && self.fleet.owner_status(stale.owner, now) != OwnerStatus::Live;
            if dead && self.purge_key(&key, stale.owner) {
                if stale.streams > 0 {
                    self.counters.incr(|s| &s.conflicts);
                    return Learned::Conflict(BackendId::CONTESTED);
                }
                inserted = insert();
            }
        }
        let learned = match inserted {
            Ok(Insert::Added { evicted }) => {
                event!(debug, tenant = exchange.tenant.get(), kind = kind.as_str(), backend = %backend, evicted, "key learned");
                self.counters.incr(|s| &s.learned);
                if evicted {
                    self.counters.incr(|s| &s.evicted);
                }
                match self.store_learned(&key, backend, principal, now) {
                    Shared::Queued => exchange.revealed = true,
                    // A new session whose binding cannot reach the store would be unknown to
                    // every other router: refused instead, so that the client starts again.
                    Shared::Dropped if kind == KeyKind::Session => {
                        if self.table.remove(&key, Some(backend)).is_some() {
                            self.counters.incr(|s| &s.unlearned);
                        }
                        return Learned::Unshared;
                    }
                    Shared::Dropped | Shared::No => {}
                }
                Learned::Bound
            }
            Ok(Insert::Exists(entry)) if entry.owner == backend => Learned::Bound,
            Ok(Insert::Exists(entry)) => {
                event!(warn, tenant = exchange.tenant.get(), kind = kind.as_str(), backend = %backend, owner = %entry.owner, "key conflict: a backend minted a key another backend owns");
                self.counters.incr(|s| &s.conflicts);
                Learned::Conflict(entry.owner)
            }
            Err(InsertError::Full { scope }) => {
                event!(warn, tenant = exchange.tenant.get(), kind = kind.as_str(), scope = ?scope, "session table full: key not learned");
                self.counters.incr(|s| &s.unlearned);
                Learned::Full(scope)
            }
            Err(_) => Learned::Refused,
        };
        if learned == Learned::Bound && !live() {
            self.purge_key(&key, backend);
            return Learned::OwnerGone;
        }
        learned
    }

    /// What to do with a response whose head revealed a new conversation's key.
    fn learned_head(&self, learned: Learned, kind: KeyKind) -> HeadOutcome {
        match learned {
            Learned::Bound | Learned::Refused | Learned::OwnerGone => HeadOutcome::Forward,
            Learned::Unroutable => HeadOutcome::Replace(self.reject(Reason::UnroutableKey(kind))),
            Learned::Conflict(_) => HeadOutcome::Replace(self.reject(Reason::KeyConflict(kind))),
            Learned::Full(scope) => HeadOutcome::Replace(self.reject(Reason::TableFull(scope))),
            Learned::Unshared => HeadOutcome::Replace(self.reject(Reason::StoreUnavailable(kind))),
        }
    }

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
        match observer.feed(chunk, self.config.max_observe) {
            Seen::More => return ChunkOutcome::More,
            Seen::Key(id) => self.learn_from_body(exchange, &id, now),
            // With sealed ids an endpoint is rewritten (`on_response_data`), never learned:
            // read only, its client will present the backend's own id and be told it is
            // unknown.
            Seen::Endpoint { id, .. } if !self.seals() => {
                self.learn_from_body(exchange, &id, now);
            }
            Seen::Endpoint { .. } | Seen::Nothing => {}
            Seen::Limit => self.counters.incr(|s| &s.observe_limit),
        }
        exchange.observer = None;
        ChunkOutcome::Done
    }

    /// Passes a chunk of a response body through the router, which may hold it back and
    /// change it: see [`HeadOutcome::Rewrite`]. Send the client what it returns, in order;
    /// when the backend's body ends, send what
    /// [`on_response_data_end`](Router::on_response_data_end) returns. For an exchange that
    /// is not rewriting, it observes the chunk as
    /// [`on_response_chunk`](Router::on_response_chunk) does and returns it unchanged.
    ///
    /// A rewriting exchange holds back the body until its legacy SSE `endpoint` event (at
    /// most the observation bound, [`max_observed_bytes`](super::RouterBuilder::max_observed_bytes)),
    /// then returns everything held, the session id in the endpoint's URL replaced by its
    /// sealed token, and from then on every chunk as it is.
    pub fn on_response_data(&self, exchange: &mut Exchange, chunk: Bytes, now: Instant) -> Data {
        if !exchange.is_rewriting() {
            if exchange.observer.is_some() {
                let _ = self.on_response_chunk(exchange, &chunk, now);
            }
            return Data::Send(chunk);
        }
        let observer = exchange.observer.as_mut().expect("rewriting");
        let seen = observer.feed(&chunk, self.config.max_observe);
        if let Seen::More = seen {
            return Data::Hold;
        }
        let held = observer.take_held().unwrap_or_default();
        exchange.observer = None;
        exchange.rewriting = false;
        let sealed = match seen {
            Seen::Endpoint {
                url,
                raw,
                id,
                after,
            } => {
                // The event ends where the bytes fed after it begin.
                let end = held.len().saturating_sub(after);
                let spliced =
                    match self.seal_minted(exchange, KeyKind::SseSession, id.as_bytes(), now) {
                        Ok(Some(token)) => splice_endpoint(&held, end, &url, raw, &token),
                        _ => None,
                    };
                if spliced.is_none() {
                    // Not sealed (its backend went away, or the URL is not in the bytes as
                    // sent, e.g. split over `data:` lines): the client gets the backend's id.
                    self.counters.incr(|s| &s.unlearned);
                }
                spliced
            }
            Seen::Limit => {
                self.counters.incr(|s| &s.observe_limit);
                None
            }
            _ => None,
        };
        Data::Send(sealed.unwrap_or_else(|| held.freeze()))
    }

    /// The backend's body ended: what is left to send of a rewriting exchange (the bytes held
    /// back, unchanged: the body ended before its endpoint event), or nothing.
    pub fn on_response_data_end(&self, exchange: &mut Exchange) -> Option<Bytes> {
        if !exchange.is_rewriting() {
            return None;
        }
        exchange.rewriting = false;
        let held = exchange.observer.take()?.take_held()?;
        (!held.is_empty()).then(|| held.freeze())
    }

    /// An answer to a request that presented a sealed id echoes the backend's own session id
    /// (Python and TypeScript servers put it on every answer, errors included): the client
    /// gets its token back, never the backend's id, whatever the status. Another id in a 2xx
    /// answer (a backend that changed its session's id) is sealed for the same owner; in any
    /// other answer it is removed.
    fn reseal_echo(
        &self,
        exchange: &Exchange,
        ok: bool,
        headers: &HeaderMap,
        edits: &mut HeadEdits,
        now: Instant,
    ) {
        let Some(echo) = headers.get(&SESSION_HEADER) else {
            return;
        };
        let same = exchange
            .key
            .as_ref()
            .is_some_and(|(_, id)| id.as_bytes() == echo.as_bytes());
        let value = if same {
            exchange.token.as_deref().map(Bytes::copy_from_slice)
        } else if !ok {
            // Nothing is sealed for an id that only a failed answer names.
            None
        } else {
            self.counters.incr(|s| &s.id_mismatches);
            let echo = echo.as_bytes().to_vec();
            self.seal_minted(exchange, KeyKind::Session, &echo, now)
                .ok()
                .flatten()
        };
        match value.map(HeaderValue::from_maybe_shared) {
            Some(Ok(token)) => edits.push(HeadEdit::Insert(SESSION_HEADER, token)),
            // Never hand the client a backend's own id.
            _ => edits.push(HeadEdit::Remove(SESSION_HEADER)),
        }
    }

    /// Learns a key revealed by a body whose head is already on its way to the client: a
    /// refusal can only be counted (its client gets a clear 404 later), and an id another
    /// backend holds is contested.
    fn learn_from_body(&self, exchange: &mut Exchange, id: &IdBuf, now: Instant) {
        let sse = exchange.intent == Intent::SseConnect;
        let kind = if sse {
            KeyKind::SseSession
        } else {
            KeyKind::Task
        };
        let hold = match self.learn(exchange, kind, id.as_bytes(), sse, now) {
            Learned::Bound if sse => Some(Hold::Own),
            Learned::Conflict(holder) => self
                .contest(exchange, kind, id, holder, sse, now)
                .then_some(Hold::Contest),
            _ => None,
        };
        exchange.stream_binding = hold.map(|hold| Box::new((id.clone(), hold)));
    }

    /// An id that `holder` owns was minted again by the exchange's backend, and its client
    /// already has it (the body is on its way): the router cannot tell which conversation a
    /// later request with that id belongs to, so it sends it to neither. The holder's binding
    /// gives way to a [`BackendId::CONTESTED`] one (answered as unknown), which counts the
    /// streams of the contesting exchanges (each releases its own at its end, whatever
    /// happened to its backend since) and then lives until it idles out (every request for
    /// it keeps it alive). The holder's own stream is not counted: its client is protected by
    /// the idle timeout after the last contester ends. Returns whether a stream of this
    /// exchange is counted on it.
    fn contest(
        &self,
        exchange: &Exchange,
        kind: KeyKind,
        id: &IdBuf,
        holder: BackendId,
        stream: bool,
        now: Instant,
    ) -> bool {
        let key = exchange.key_of(kind, id);
        // Who holds the binding now; `None` once it vanished (its holder ended meanwhile).
        let mut holder = Some(holder);
        for _ in 0..3 {
            match holder {
                Some(BackendId::CONTESTED) => {}
                Some(owner) => {
                    // The holder's binding turns into the contest in place (no room needed in
                    // a full table); the holder's own streams are not counted on it.
                    match self.table.set_owner(&key, owner, BackendId::CONTESTED, now) {
                        Ok(entry) => {
                            for _ in 0..entry.streams {
                                let _ = self.table.close_stream(&key, now);
                            }
                        }
                        Err(SetOwnerError::OwnerChanged(entry)) => {
                            holder = Some(entry.owner);
                            continue;
                        }
                        Err(_) => {
                            holder = None;
                            continue;
                        }
                    }
                }
                None => match self.table.insert(&key, BackendId::CONTESTED, None, now) {
                    Ok(Insert::Added { .. }) => self.counters.incr(|s| &s.learned),
                    Ok(Insert::Exists(entry)) if entry.owner != BackendId::CONTESTED => {
                        holder = Some(entry.owner);
                        continue;
                    }
                    Ok(Insert::Exists(_)) => {}
                    // No room: nothing left to protect but nothing to misroute either.
                    Err(_) => return false,
                },
            }
            if !stream {
                return false;
            }
            match self.table.open_stream(&key, now) {
                Some(entry) if entry.owner == BackendId::CONTESTED => return true,
                Some(entry) => {
                    // Rebound between the two calls: undo, and contest the new holder.
                    let _ = self.table.close_stream(&key, now);
                    holder = Some(entry.owner);
                }
                None => holder = None,
            }
        }
        false
    }

    /// Releases what the exchange held: see the [call protocol](Router#the-call-protocol).
    /// Completed and aborted exchanges release alike; `end` is there for the record.
    pub fn on_exchange_end(&self, mut exchange: Exchange, end: End, now: Instant) {
        let _ = end;
        self.release(&mut exchange, now);
    }

    /// Lets go of what a response made the exchange hold: the stream it counted on a legacy
    /// SSE binding, the stream it opened on a session.
    pub(super) fn release(&self, exchange: &mut Exchange, now: Instant) {
        let own = exchange
            .stream_binding
            .as_ref()
            .is_some_and(|binding| binding.1 == Hold::Own);
        if (own || exchange.stream_open) && self.fleet.term(exchange.backend) != exchange.term {
            // Its backend's term is over: what it held there went with it (purged, or taken
            // over), and the same ids may be held by another term now. (A stream counted on
            // a contested id is released whatever the backend's term.)
            if own {
                exchange.stream_binding = None;
            }
            exchange.stream_open = false;
        }
        if let Some(binding) = exchange.stream_binding.take() {
            let (id, hold) = &*binding;
            let key = exchange.key_of(KeyKind::SseSession, id);
            match hold {
                // A legacy SSE session lives exactly as long as its streams.
                Hold::Own => {
                    let released = self.table.release_stream(&key, exchange.backend, now);
                    if released.is_some_and(|entry| entry.streams == 0) {
                        event!(debug, tenant = exchange.tenant.get(), backend = %exchange.backend, "legacy SSE session ended with its stream");
                        self.counters.incr(|s| &s.released);
                        self.store_forgotten(&key, exchange.backend);
                    }
                }
                // A contested id outlives its last contester by the idle timeout.
                Hold::Contest => {
                    let released = self.table.release_stream(&key, BackendId::CONTESTED, now);
                    if released.is_some_and(|entry| entry.streams == 0) {
                        self.counters.incr(|s| &s.released);
                        if self
                            .table
                            .insert(&key, BackendId::CONTESTED, None, now)
                            .is_ok_and(|i| matches!(i, Insert::Added { .. }))
                        {
                            self.counters.incr(|s| &s.learned);
                        }
                    }
                }
            }
        }
        if std::mem::take(&mut exchange.stream_open) {
            if let Some(key) = exchange.routed_key() {
                let _ = self.table.close_stream(&key, now);
            }
        }
    }
}

#[cfg(test)]
// The tests hold the clock.
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::time::Instant;

    use http::header::{HeaderValue, SET_COOKIE};
    use http::{Request, Response, StatusCode};

    use crate::TenantId;
    use crate::router::classify::SESSION_HEADER;
    use crate::router::{HeadEdit, HeadOutcome, Routed, Router};

    /// An initialize, placed and answered with a minted session.
    fn answered(router: &Router, now: Instant) -> (crate::router::Exchange, http::response::Parts) {
        let (init, ()) = Request::post("/mcp").body(()).unwrap().into_parts();
        let Routed::Forward(exchange) = router.route(&init, now) else {
            panic!("placed")
        };
        let (head, ()) = Response::builder()
            .header(SESSION_HEADER, "4f2a9c1e")
            .body(())
            .unwrap()
            .into_parts();
        (exchange, head)
    }

    #[test]
    fn head_edits_are_what_on_response_head_does_to_the_head() {
        let now = Instant::now();
        let router = Router::builder().affinity_cookie("mcp_backend").build();
        router
            .add_backend(TenantId::DEFAULT, "http://127.0.0.1:9001", 1)
            .unwrap();

        // By value: the head is read, not changed, and the cookie comes as an edit.
        let (mut exchange, head) = answered(&router, now);
        let (outcome, edits) =
            router.on_response_head_edits(&mut exchange, StatusCode::OK, &head.headers, now);
        assert!(matches!(outcome, HeadOutcome::Forward));
        assert!(!head.headers.contains_key(SET_COOKIE));
        let edits: Vec<HeadEdit> = edits.into_iter().collect();
        let cookie = HeaderValue::from_static("mcp_backend=0.0; Path=/; HttpOnly; SameSite=Lax");
        assert_eq!(edits, [HeadEdit::Append(SET_COOKIE, cookie.clone())]);
        router.on_exchange_end(exchange, crate::router::End::Completed, now);

        // In place: the same change, made.
        let (mut exchange, mut head) = answered(&router, now);
        let outcome = router.on_response_head(&mut exchange, &mut head, now);
        assert!(matches!(outcome, HeadOutcome::Forward));
        assert_eq!(head.headers.get(SET_COOKIE), Some(&cookie));
        router.on_exchange_end(exchange, crate::router::End::Completed, now);

        // Both learned their session.
        assert_eq!(
            router.metrics().keys_learned,
            1,
            "the second is the same id"
        );
        assert_eq!(router.metrics().key_conflicts, 0);
    }

    #[cfg(feature = "seal")]
    #[test]
    fn sealed_ids_come_as_edits_to_the_response_and_the_request() {
        use crate::router::Sealing;
        use crate::seal::{Keyring, SealKey};

        let now = Instant::now();
        let keyring = Keyring::new([SealKey::new([7; 32])]).unwrap();
        let router = Router::builder()
            .sealing(Sealing::new(keyring, [9; 12], now, 1_800_000_000))
            .build();
        router
            .add_backend(TenantId::DEFAULT, "http://127.0.0.1:9001", 1)
            .unwrap();

        // The minted id is replaced by its token.
        let (mut exchange, head) = answered(&router, now);
        let (outcome, edits) =
            router.on_response_head_edits(&mut exchange, StatusCode::OK, &head.headers, now);
        assert!(matches!(outcome, HeadOutcome::Forward));
        assert_eq!(head.headers[&SESSION_HEADER], "4f2a9c1e", "not changed");
        let token = match edits.into_iter().collect::<Vec<_>>().as_slice() {
            [HeadEdit::Insert(name, token)] if *name == SESSION_HEADER => token.clone(),
            other => panic!("one insert of the token: {other:?}"),
        };
        assert_ne!(token, "4f2a9c1e");
        router.on_exchange_end(exchange, crate::router::End::Completed, now);

        // The token's next request: the backend gets its own id back, as an edit.
        let (call, ()) = Request::post("/mcp")
            .header(SESSION_HEADER, token.clone())
            .body(())
            .unwrap()
            .into_parts();
        let Routed::Forward(exchange) = router.route(&call, now) else {
            panic!("pinned")
        };
        let edits: Vec<HeadEdit> = exchange.request_edits(&call).into_iter().collect();
        let own = HeaderValue::from_static("4f2a9c1e");
        assert_eq!(edits, [HeadEdit::Insert(SESSION_HEADER, own.clone())]);
        let mut rewritten = call.clone();
        exchange.rewrite_request(&mut rewritten);
        assert_eq!(rewritten.headers[&SESSION_HEADER], own);
        router.on_exchange_end(exchange, crate::router::End::Completed, now);
    }
}
