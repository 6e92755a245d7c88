//! Rejections: the typed reason, and the response a client understands.

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::table::{InvalidKey, KeyKind, Scope};

/// Why the router refused to forward a request. Never a re-hash: each reason is answered with
/// the status a client of that era acts on.
///
/// | reason | status | JSON-RPC code | what the client does |
/// |---|---|---|---|
/// | [`UnknownKey`](Reason::UnknownKey) | 404 | -32001 | re-initializes (legacy eras) |
/// | [`OwnerGone`](Reason::OwnerGone) | 404 | -32001 | re-initializes |
/// | [`OwnerRevoked`](Reason::OwnerRevoked) | 404 | -32001 | re-initializes |
/// | [`OwnerDown`](Reason::OwnerDown) | 404 | -32001 | re-initializes |
/// | [`OwnerUnreachable`](Reason::OwnerUnreachable) | 503 + `Retry-After` | -32000 | retries later (its session may live) |
/// | [`WrongPrincipal`](Reason::WrongPrincipal) | 404 | -32001 | exactly as for an unknown key |
/// | [`InvalidToken`](Reason::InvalidToken) | 404 | -32001 | exactly as for an unknown key |
/// | [`UnknownOwner`](Reason::UnknownOwner) | 503 + `Retry-After` | -32000 | retries (another router may know better) |
/// | [`StoreUnavailable`](Reason::StoreUnavailable) | 503 + `Retry-After` | -32000 | retries (the session may live: never a 404) |
/// | [`UnknownTenant`](Reason::UnknownTenant) | 404 | -32001 | — |
/// | [`InvalidKey`](Reason::InvalidKey) | 404 (400 for an operator key) | -32001 (-32600) | exactly as for an unknown key |
/// | [`BadEra`](Reason::BadEra) | 400 | -32600 | fixes its request |
/// | [`AmbiguousKey`](Reason::AmbiguousKey) | 400 | -32600 | fixes its request |
/// | [`TableFull`](Reason::TableFull) | 503 + `Retry-After` | -32000 | retries later |
/// | [`KeyConflict`](Reason::KeyConflict) | 503 + `Retry-After` | -32000 | retries (gets a new id) |
/// | [`UnroutableKey`](Reason::UnroutableKey) | 502 | -32603 | reports it (the operator raises [`max_key_len`](super::RouterBuilder::max_key_len)) |
/// | [`NoReadyBackend`](Reason::NoReadyBackend) | 503 + `Retry-After` | -32000 | retries later |
///
/// Task keys (2026-07-28 era) that are unknown, gone, revoked or invalid answer 404 with code
/// -32602 ("Task not found"): in that era a 404 alone would read as *method not found*, so the
/// body says what is missing.
///
/// A protocol key that is not a valid id (too long, a byte outside visible ASCII, empty) is
/// answered exactly as an unknown one: no backend can have minted it for this router, and a
/// 400 would leave the client with no way to recover, where a 404 makes it start over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The request carried a key the router never learned (or forgot, or that belongs to
    /// another tenant: keys are namespaced, so the two cannot be told apart).
    UnknownKey(KeyKind),
    /// The key's owner was removed (or restarted: a new generation is a new owner).
    OwnerGone(KeyKind),
    /// The key's owner was draining and its deadline passed: its keys were revoked.
    OwnerRevoked(KeyKind),
    /// The key's owner is down: it refused connections, so its sessions died with its process
    /// (see [`Health::Down`](super::Health::Down)).
    OwnerDown(KeyKind),
    /// The key's owner could not be reached in time: it may be alive and hold the session,
    /// so the client is asked to retry rather than to start over.
    OwnerUnreachable(KeyKind),
    /// The key was learned under another principal (anti-hijack binding).
    WrongPrincipal(KeyKind),
    /// A sealed id that does not open: garbage, truncated, forged, another key, tenant or
    /// principal, expired (the metrics count each cause:
    /// [`Metrics::tokens_refused`](super::Metrics::tokens_refused)).
    InvalidToken(KeyKind),
    /// A sealed id, or a binding in the shared store, naming a backend this router does not
    /// know, a newer incarnation of it, or one it sees down that came back since; or a
    /// binding it cannot read (a newer format during a rolling upgrade): the router is behind
    /// the fleet, and must not decide for the key.
    UnknownOwner(KeyKind),
    /// The key is not known here and the shared store could not be asked in time (see
    /// [`store`](super::store)): the session may live elsewhere, so the client is asked to
    /// retry, never told it is gone.
    StoreUnavailable(KeyKind),
    /// The request maps to no tenant.
    UnknownTenant,
    /// The request carried a key that is not a valid id (answered as an unknown key, except
    /// for operator keys, which the client chose: 400).
    InvalidKey(KeyKind, InvalidKey),
    /// The request does not fit the era of the path it was sent to.
    BadEra(BadEra),
    /// The request names more than one key (a repeated `Mcp-Session-Id` or `Mcp-Name`, a
    /// header some backends read as one of them, such as `Mcp_Session_Id`, or two session
    /// query parameters): backends differ on which one they use, so the router does not
    /// guess.
    AmbiguousKey(KeyKind),
    /// A new conversation could not be recorded: the session table is full.
    TableFull(Scope),
    /// A backend minted a key that another backend already owns; the response was not
    /// forwarded, so the client retries and gets a fresh id.
    KeyConflict(KeyKind),
    /// A backend minted a key this router cannot route by (longer than its bound, or not visible
    /// ASCII; two session ids in one answer to a conversation start; with sealed ids, in a
    /// compressed legacy SSE stream, whose `endpoint` cannot be sealed, or for a backend removed or
    /// found down before its answer came, for which nothing is sealed): the conversation could
    /// never be routed, so a response head that names it is refused at once. (A key revealed in a
    /// body has already reached the client: it is only counted, and the client's next request is
    /// answered as an unknown key.)
    UnroutableKey(KeyKind),
    /// A new conversation found no ready backend in its tenant's fleet.
    NoReadyBackend,
}

impl Reason {
    /// A stable lowercase name, for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        Reason::NAMES[self.index()]
    }

    /// Every reason's name ([`as_str`](Reason::as_str)), in the order [`Metrics::rejected`](super::Metrics::rejected) lists them.
    pub const NAMES: &'static [&'static str] = &[
        "unknown_key",
        "owner_gone",
        "owner_revoked",
        "owner_down",
        "owner_unreachable",
        "wrong_principal",
        "invalid_token",
        "unknown_owner",
        "store_unavailable",
        "unknown_tenant",
        "invalid_key",
        "bad_era",
        "ambiguous_key",
        "table_full",
        "key_conflict",
        "unroutable_key",
        "no_ready_backend",
    ];

    /// A dense index, for counters: the reason's position in [`NAMES`](Reason::NAMES).
    pub(crate) fn index(&self) -> usize {
        match self {
            Reason::UnknownKey(_) => 0,
            Reason::OwnerGone(_) => 1,
            Reason::OwnerRevoked(_) => 2,
            Reason::OwnerDown(_) => 3,
            Reason::OwnerUnreachable(_) => 4,
            Reason::WrongPrincipal(_) => 5,
            Reason::InvalidToken(_) => 6,
            Reason::UnknownOwner(_) => 7,
            Reason::StoreUnavailable(_) => 8,
            Reason::UnknownTenant => 9,
            Reason::InvalidKey(..) => 10,
            Reason::BadEra(_) => 11,
            Reason::AmbiguousKey(_) => 12,
            Reason::TableFull(_) => 13,
            Reason::KeyConflict(_) => 14,
            Reason::UnroutableKey(_) => 15,
            Reason::NoReadyBackend => 16,
        }
    }

    /// The request's key names no conversation this router can serve: answered as "session
    /// (or task) not found".
    fn lost(&self) -> bool {
        match *self {
            Reason::UnknownKey(_)
            | Reason::OwnerGone(_)
            | Reason::OwnerRevoked(_)
            | Reason::OwnerDown(_)
            | Reason::InvalidToken(_)
            | Reason::WrongPrincipal(_) => true,
            Reason::InvalidKey(kind, _) => kind != KeyKind::Operator,
            _ => false,
        }
    }

    fn kind(&self) -> Option<KeyKind> {
        match *self {
            Reason::UnknownKey(kind)
            | Reason::OwnerGone(kind)
            | Reason::OwnerRevoked(kind)
            | Reason::OwnerDown(kind)
            | Reason::OwnerUnreachable(kind)
            | Reason::InvalidToken(kind)
            | Reason::UnknownOwner(kind)
            | Reason::StoreUnavailable(kind)
            | Reason::WrongPrincipal(kind)
            | Reason::InvalidKey(kind, _)
            | Reason::AmbiguousKey(kind)
            | Reason::KeyConflict(kind)
            | Reason::UnroutableKey(kind) => Some(kind),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UnknownKey(kind) => write!(f, "unknown {kind} key"),
            Reason::OwnerGone(kind) => write!(f, "owner of the {kind} key is gone"),
            Reason::OwnerRevoked(kind) => write!(f, "{kind} key revoked after its owner drained"),
            Reason::OwnerDown(kind) => write!(f, "owner of the {kind} key is down"),
            Reason::OwnerUnreachable(kind) => {
                write!(f, "owner of the {kind} key could not be reached")
            }
            Reason::WrongPrincipal(kind) => write!(f, "{kind} key learned under another principal"),
            Reason::InvalidToken(kind) => write!(f, "sealed {kind} id does not open"),
            Reason::UnknownOwner(kind) => {
                write!(f, "owner of the {kind} key not known to this router yet")
            }
            Reason::StoreUnavailable(kind) => {
                write!(
                    f,
                    "{kind} key not known here and the shared store unavailable"
                )
            }
            Reason::UnknownTenant => f.write_str("request maps to no tenant"),
            Reason::InvalidKey(kind, why) => write!(f, "invalid {kind} key: {why}"),
            Reason::BadEra(why) => fmt::Display::fmt(why, f),
            Reason::AmbiguousKey(kind) => write!(f, "more than one {kind} key"),
            Reason::TableFull(scope) => write!(f, "session table full ({scope:?})"),
            Reason::KeyConflict(kind) => write!(f, "{kind} key minted by two backends"),
            Reason::UnroutableKey(kind) => write!(f, "backend minted an unroutable {kind} key"),
            Reason::NoReadyBackend => f.write_str("no ready backend"),
        }
    }
}

/// How a request misfits the era of its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadEra {
    /// A request on a legacy SSE message path without the session query parameter.
    MissingSseSession,
    /// `MCP-Protocol-Version` is not a date (`YYYY-MM-DD`): its era cannot be told.
    InvalidProtocolVersion,
    /// `MCP-Protocol-Version` appears more than once: backends differ on which one they read.
    AmbiguousProtocolVersion,
    /// `Mcp-Method` appears more than once.
    AmbiguousMethod,
}

impl BadEra {
    fn message(self) -> &'static str {
        match self {
            BadEra::MissingSseSession => "Legacy SSE message without its session parameter",
            BadEra::InvalidProtocolVersion => "Invalid MCP-Protocol-Version",
            BadEra::AmbiguousProtocolVersion => "More than one MCP-Protocol-Version",
            BadEra::AmbiguousMethod => "More than one Mcp-Method",
        }
    }
}

impl fmt::Display for BadEra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A refused request: its [`Reason`], and the response to send instead of forwarding it.
///
/// A lost legacy session (a `Mcp-Session-Id` or legacy SSE session that is unknown, gone,
/// down, revoked, another principal's, or presented as an invalid id or token) is answered as MCP servers answer it: 404 with a JSON-RPC
/// error, `{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"},"id":null}`,
/// which every SDK reads as "start a new session" (rmcp re-initializes on its own).
///
/// Every other rejection has a plain-text body (`text/plain`, [`message`](Rejection::message))
/// and the status says it all. The router does not read request bodies, so it cannot echo the
/// request's JSON-RPC `id`, and some clients wait forever for the answer to their request when
/// handed an error with `id: null` on a request that is not about a session (rmcp 3.9 does,
/// for a 503 or a 400 inside a session, or a task's 404); a text body fails those requests at
/// once. [`jsonrpc_body`](Rejection::jsonrpc_body) is there for embedders that know better,
/// and [`RouterBuilder::rejection_body`](super::RouterBuilder::rejection_body) replaces bodies
/// wholesale.
#[derive(Clone, Debug)]
#[must_use = "a rejection must be answered"]
pub struct Rejection {
    reason: Reason,
    retry_after: u32,
    /// The embedder's `Content-Type` and body ([`RouterBuilder::rejection_body`](super::RouterBuilder::rejection_body)).
    custom: Option<(HeaderValue, Bytes)>,
}

impl Rejection {
    pub(crate) fn new(reason: Reason, retry_after: u32) -> Self {
        Rejection {
            reason,
            retry_after,
            custom: None,
        }
    }

    pub(crate) fn with_custom(mut self, custom: Option<(HeaderValue, Bytes)>) -> Self {
        self.custom = custom;
        self
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The HTTP status (see the table on [`Reason`]).
    pub fn status(&self) -> StatusCode {
        if self.reason.lost() {
            return StatusCode::NOT_FOUND;
        }
        match self.reason {
            Reason::UnknownTenant => StatusCode::NOT_FOUND,
            Reason::TableFull(_)
            | Reason::KeyConflict(_)
            | Reason::NoReadyBackend
            | Reason::OwnerUnreachable(_)
            | Reason::UnknownOwner(_)
            | Reason::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UnroutableKey(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Seconds for `Retry-After`, on 503 answers.
    pub fn retry_after(&self) -> Option<u32> {
        (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(self.retry_after)
    }

    /// Whether the default body is a JSON-RPC error: for lost legacy sessions (see the type's
    /// docs).
    pub fn is_jsonrpc(&self) -> bool {
        self.reason.lost()
            && matches!(
                self.reason.kind(),
                Some(KeyKind::Session | KeyKind::SseSession)
            )
    }

    /// The response headers: `Content-Type` (the embedder's, with a body of its own; else
    /// `application/json` or `text/plain; charset=utf-8`), and `Retry-After` on 503.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(2);
        let content_type = match &self.custom {
            Some((content_type, _)) => content_type.clone(),
            None if self.is_jsonrpc() => HeaderValue::from_static("application/json"),
            None => HeaderValue::from_static("text/plain; charset=utf-8"),
        };
        headers.insert(CONTENT_TYPE, content_type);
        if let Some(seconds) = self.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        headers
    }

    /// The JSON-RPC error code of the rejection: the one the default body carries when it is
    /// JSON-RPC, and the one [`jsonrpc_body`](Rejection::jsonrpc_body) uses.
    pub fn code(&self) -> i32 {
        match (self.reason, self.reason.kind()) {
            (reason, Some(KeyKind::Task)) if reason.lost() => -32602,
            (reason, _) if reason.lost() => -32001,
            (Reason::UnknownTenant, _) => -32001,
            (
                Reason::TableFull(_)
                | Reason::KeyConflict(_)
                | Reason::NoReadyBackend
                | Reason::OwnerUnreachable(_)
                | Reason::UnknownOwner(_)
                | Reason::StoreUnavailable(_),
                _,
            ) => -32000,
            (Reason::UnroutableKey(_), _) => -32603,
            _ => -32600,
        }
    }

    /// The message of the body.
    pub fn message(&self) -> &'static str {
        match (self.reason, self.reason.kind()) {
            (reason, Some(KeyKind::Task)) if reason.lost() => "Task not found",
            (reason, _) if reason.lost() => "Session not found",
            (Reason::InvalidKey(..), _) => "Invalid key",
            (Reason::BadEra(why), _) => why.message(),
            (Reason::AmbiguousKey(_), _) => "More than one session id",
            (Reason::TableFull(_), _) => "Too many sessions; retry later",
            (Reason::KeyConflict(_), _) => "Session id conflict; retry",
            (Reason::UnroutableKey(_), _) => "Backend minted an unroutable session id",
            (Reason::NoReadyBackend, _) => "No backend available; retry later",
            (Reason::OwnerUnreachable(_), _) => "Backend unreachable; retry later",
            (Reason::UnknownOwner(_), _) => "Session owner not known here; retry",
            (Reason::StoreUnavailable(_), _) => "Session store unavailable; retry later",
            (Reason::UnknownTenant, _) => "Unknown tenant",
            _ => "Bad request",
        }
    }

    /// The response body: the embedder's, if it set one; else a JSON-RPC error for a lost
    /// legacy session and the [`message`](Rejection::message) for anything else.
    pub fn body(&self) -> Bytes {
        if let Some((_, body)) = &self.custom {
            return body.clone();
        }
        if self.is_jsonrpc() {
            self.jsonrpc_body()
        } else {
            Bytes::from_static(self.message().as_bytes())
        }
    }

    /// The rejection as a JSON-RPC error with `id: null`, whatever the reason:
    /// `{"jsonrpc":"2.0","error":{"code":…,"message":"…"},"id":null}`.
    pub fn jsonrpc_body(&self) -> Bytes {
        Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":{},"message":"{}"}},"id":null}}"#,
            self.code(),
            self.message()
        ))
    }

    /// The whole response.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut response = Response::new(self.body());
        *response.status_mut() = self.status();
        *response.headers_mut() = self.headers();
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_name() {
        let kind = KeyKind::Session;
        let every = [
            Reason::UnknownKey(kind),
            Reason::OwnerGone(kind),
            Reason::OwnerRevoked(kind),
            Reason::OwnerDown(kind),
            Reason::OwnerUnreachable(kind),
            Reason::WrongPrincipal(kind),
            Reason::InvalidToken(kind),
            Reason::UnknownOwner(kind),
            Reason::StoreUnavailable(kind),
            Reason::UnknownTenant,
            Reason::InvalidKey(kind, InvalidKey::Empty),
            Reason::BadEra(BadEra::AmbiguousMethod),
            Reason::AmbiguousKey(kind),
            Reason::TableFull(Scope::Global),
            Reason::KeyConflict(kind),
            Reason::UnroutableKey(kind),
            Reason::NoReadyBackend,
        ];
        let names: Vec<_> = every.iter().map(Reason::as_str).collect();
        assert_eq!(
            names,
            Reason::NAMES,
            "each reason at its index, every index used"
        );
        // The names are the variants' names in snake case.
        for (reason, name) in every.iter().zip(names) {
            let variant = format!("{reason:?}");
            let variant = variant.split('(').next().unwrap();
            let snake: String = variant
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                    sep.into_iter()
                        .chain(std::iter::once(c.to_ascii_lowercase()))
                })
                .collect();
            assert_eq!(name, snake);
        }
    }
}
