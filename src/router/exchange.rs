//! The per-request state a forwarded request carries, and the outcomes of the calls that
//! drive it.

use std::fmt;

use super::classify::{Era, Intent, SESSION_HEADER};
use super::edit::{HeadEdit, HeadEdits};
use super::fleet::PendingStart;
use super::observe::Observer;
use super::reject::Rejection;
use crate::table::{Key, KeyKind, Principal};
use crate::{BackendId, TenantId};

/// Ids up to this many bytes are kept inside the exchange (every SDK's ids fit, a 64-digit hex
/// id, and a UUID operator key with its 18-byte principal prefix): routing a keyed request
/// does not allocate.
const INLINE: usize = 70;

/// An owned copy of a key's id, inline when short.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum IdBuf {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl IdBuf {
    #[inline]
    pub(crate) fn new(id: &[u8]) -> Self {
        if id.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..id.len()].copy_from_slice(id);
            IdBuf::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            IdBuf::Heap(id.into())
        }
    }

    /// `prefix` then `id`, as one id.
    pub(crate) fn prefixed(prefix: &[u8], id: &[u8]) -> Self {
        let len = prefix.len() + id.len();
        if len <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..prefix.len()].copy_from_slice(prefix);
            bytes[prefix.len()..len].copy_from_slice(id);
            IdBuf::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            IdBuf::Heap([prefix, id].concat().into())
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            IdBuf::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdBuf::Heap(bytes) => bytes,
        }
    }
}

impl fmt::Debug for IdBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// `uri` with the value of its legacy SSE session parameter replaced by `id`.
fn with_session_param(uri: &http::Uri, id: &[u8]) -> Option<http::Uri> {
    let query = uri.query()?;
    // (The request was routed by this parameter: it names exactly one.)
    let raw = super::classify::sse_session_param(query).ok()??.raw;
    let path_and_query = format!(
        "{}?{}{}{}",
        uri.path(),
        &query[..raw.start],
        super::path::encode_query(id),
        &query[raw.end..]
    );
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// Where an exchange's legacy SSE stream is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// On its backend's binding of the id.
    Own,
    /// On the contested binding of an id two backends minted.
    Contest,
}

/// How the backend of an exchange was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The request's key is owned by this backend.
    Pinned,
    /// The placement policy chose this backend for a request without a known owner (or the
    /// affinity cookie named it: a hint, offered to the veto like any placement, and placed
    /// elsewhere if it cannot be delivered).
    Placed,
}

/// The state of one forwarded request, owned by the task that proxies it.
///
/// [`Router::route`](super::Router::route) creates it; pass it to
/// [`on_response_head`](super::Router::on_response_head), to
/// [`on_response_chunk`](super::Router::on_response_chunk) while observing the body, and
/// finally, by value, to [`on_exchange_end`](super::Router::on_exchange_end) (or hand it to
/// [`ObservedBody`](crate::body::ObservedBody), which does all that). If the request could
/// not be delivered, hand it to [`on_undelivered`](super::Router::on_undelivered) instead.
///
/// Dropping an exchange without ending it releases the placement it counted on its backend,
/// but nothing the response made it hold: an open `GET` stream keeps its session from
/// expiring, and a legacy SSE binding stays until its owner is removed or down. Those stay
/// bounded by the table's capacity; end every exchange.
#[must_use = "an exchange must be ended with Router::on_exchange_end"]
pub struct Exchange {
    pub(crate) tenant: TenantId,
    pub(crate) backend: BackendId,
    /// The backend's term when the exchange was routed: what the exchange learns, holds or
    /// reports counts only while that term lasts.
    pub(crate) term: u32,
    pub(crate) how: How,
    pub(crate) intent: Intent,
    /// The key the request was routed by.
    pub(crate) key: Option<(KeyKind, IdBuf)>,
    /// An operator key to bind to the backend when it answers 2xx (rare: boxed, so that the
    /// exchange stays small).
    pub(crate) bind_operator: Option<Box<IdBuf>>,
    pub(crate) principal: Option<Principal>,
    pub(crate) observer: Option<Box<Observer>>,
    /// A key learned from this response that lives only as long as the response stream
    /// (legacy SSE; boxed like `bind_operator`).
    pub(crate) stream_binding: Option<Box<(IdBuf, Hold)>>,
    /// `open_stream` was called on `key`: close it at the end.
    pub(crate) stream_open: bool,
    /// The response gets an affinity cookie.
    pub(crate) set_cookie: bool,
    /// A placed conversation start, counted on its backend until answered (or dropped).
    pub(crate) pending: Option<PendingStart>,
    /// Backends a placement was tried on and could not be delivered to (rarely any).
    pub(crate) tried: Vec<BackendId>,
    /// The sealed token the client presented (the request carries it; the backend must get
    /// its own id, and answers that echo that id give the client its token back).
    pub(crate) token: Option<Box<[u8]>>,
    /// The response body is held back until its first event is rewritten (legacy SSE with
    /// sealed ids): the body must pass through
    /// [`on_response_data`](super::Router::on_response_data).
    pub(crate) rewriting: bool,
    /// The response revealed a shared key whose store write is queued: the client must not
    /// see it before the store has it.
    pub(crate) revealed: bool,
}

impl Exchange {
    #[inline]
    pub(crate) fn new(
        tenant: TenantId,
        backend: BackendId,
        how: How,
        intent: Intent,
        principal: Option<Principal>,
    ) -> Self {
        Exchange {
            tenant,
            backend,
            term: 0,
            how,
            intent,
            key: None,
            bind_operator: None,
            principal,
            observer: None,
            stream_binding: None,
            stream_open: false,
            set_cookie: false,
            pending: None,
            tried: Vec::new(),
            token: None,
            rewriting: false,
            revealed: false,
        }
    }

    /// An exchange pinned by `key` to `owner`, in the owner's term `term`.
    #[inline]
    pub(crate) fn pinned(
        tenant: TenantId,
        owner: BackendId,
        term: u32,
        key: (KeyKind, IdBuf),
        intent: Intent,
        principal: Option<Principal>,
    ) -> Self {
        Exchange {
            term,
            key: Some(key),
            ..Exchange::new(tenant, owner, How::Pinned, intent, principal)
        }
    }

    /// The backend to forward the request to.
    pub fn backend(&self) -> BackendId {
        self.backend
    }

    /// The tenant of the request.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Whether the backend owns the request's key or was chosen by placement.
    pub fn how(&self) -> How {
        self.how
    }

    /// Whether [`on_undelivered`](super::Router::on_undelivered) may place this request on
    /// another backend: it is not pinned by a session or task key, whose owner is the only
    /// backend that can serve it (an operator key whose owner refuses connections is bound
    /// afresh elsewhere). A forwarder keeps the body of such a request to send it again.
    pub fn is_placeable(&self) -> bool {
        self.key
            .as_ref()
            .is_none_or(|(kind, _)| *kind == KeyKind::Operator)
    }

    /// The MCP era the request belongs to; `None` for a request routed as plain HTTP (a
    /// non-MCP path, or a keyless legacy `GET`).
    pub fn era(&self) -> Option<Era> {
        self.intent.era()
    }

    /// The kind and id of the key the request was routed by, if any.
    pub fn key(&self) -> Option<(KeyKind, &str)> {
        self.key.as_ref().map(|(kind, id)| {
            let id = std::str::from_utf8(id.as_bytes()).expect("keys are visible ASCII");
            (*kind, id)
        })
    }

    /// Whether the request starts a conversation (a legacy `initialize`, a legacy SSE
    /// connect). Such a request leaves nothing behind that outlives its backend, so an
    /// embedder may hand it to [`on_undelivered`](super::Router::on_undelivered) to be placed
    /// again even when it may have reached a backend that has died since (and now refuses
    /// connections); any other placed request should be reported only when surely undelivered.
    pub fn starts_conversation(&self) -> bool {
        self.intent.starts_conversation()
    }

    /// Whether the router is still reading the response body.
    pub fn is_observing(&self) -> bool {
        self.observer.is_some()
    }

    /// Whether the router may still change the response body: then every data chunk must go
    /// through [`on_response_data`](super::Router::on_response_data), and what it returns is
    /// what the client gets.
    pub fn is_rewriting(&self) -> bool {
        self.rewriting && self.observer.is_some()
    }

    /// Whether the response just revealed a key shared through the store (a new session,
    /// task or operator key) whose write is queued: the client must not be able to present it
    /// to another router before the store has it. When this returns `true` (once; it clears
    /// the flag), perform the router's queued writes
    /// ([`take_store_writes`](super::Router::take_store_writes)) and wait for them before
    /// sending the response head, or the body chunk just passed to the router.
    /// [`AffinityLayer::store_sync`](crate::tower) and [`ObservedBody`](crate::body) do it.
    pub fn take_store_sync(&mut self) -> bool {
        std::mem::take(&mut self.revealed)
    }

    /// Whether the client presented a sealed id for this request (see
    /// [`rewrite_request`](Exchange::rewrite_request)).
    pub fn is_sealed(&self) -> bool {
        self.token.is_some()
    }

    /// Puts into the request what the backend must see instead of what the client sent: for
    /// a request that presented a sealed id, the backend's own session id, in the
    /// `Mcp-Session-Id` header (Streamable HTTP) or the session query parameter (legacy SSE).
    /// Call it before forwarding; it changes nothing for any other request.
    pub fn rewrite_request(&self, request: &mut http::request::Parts) {
        // Without a sealed id there is nothing to change (and nothing to build).
        if self.token.is_some() {
            self.request_edits(request).apply_to_request(request);
        }
    }

    /// [`rewrite_request`](Exchange::rewrite_request) for an embedder whose request head is not
    /// `http::request::Parts` (pingora's `RequestHeader` changes only through its own methods):
    /// the changes to make, instead of making them (none but for a sealed id).
    pub fn request_edits(&self, request: &http::request::Parts) -> HeadEdits {
        let mut edits = HeadEdits::default();
        let (Some(_), Some((kind, id))) = (&self.token, &self.key) else {
            return edits;
        };
        match kind {
            KeyKind::Session => {
                if let Ok(value) = http::HeaderValue::from_bytes(id.as_bytes()) {
                    edits.push(HeadEdit::Insert(SESSION_HEADER, value));
                }
            }
            KeyKind::SseSession => {
                if let Some(uri) = with_session_param(&request.uri, id.as_bytes()) {
                    edits.push(HeadEdit::Uri(uri));
                }
            }
            _ => {}
        }
        edits
    }

    pub(crate) fn routed_key(&self) -> Option<Key<'_>> {
        self.key.as_ref().map(|(kind, id)| self.key_of(*kind, id))
    }

    pub(crate) fn key_of<'a>(&self, kind: KeyKind, id: &'a IdBuf) -> Key<'a> {
        // (Validated when the exchange took it.)
        Key::revalidated_in_debug(self.tenant, kind, id.as_bytes())
    }
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange")
            .field("tenant", &self.tenant)
            .field("backend", &self.backend)
            .field("how", &self.how)
            .field("intent", &self.intent)
            .field("key", &self.key)
            .field("observing", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// What [`Router::route`](super::Router::route) decided.
#[must_use = "a request must be forwarded or rejected"]
#[derive(Debug)]
pub enum Routed {
    /// Forward the request to [`Exchange::backend`], and drive the exchange with the response.
    Forward(Exchange),
    /// Answer with the rejection; do not forward.
    Reject(Rejection),
    /// The key is not known here: look it up in the shared store, and hand the answer to
    /// [`Router::on_lookup`](super::Router::on_lookup) (see [`store`](super::store)).
    Lookup(super::store::Lookup),
}

/// What to do with a response, once its head was shown to
/// [`Router::on_response_head`](super::Router::on_response_head).
#[must_use]
#[derive(Debug)]
#[non_exhaustive]
pub enum HeadOutcome {
    /// Forward the response; the router needs nothing of its body.
    Forward,
    /// Forward the response and show its body chunks to
    /// [`Router::on_response_chunk`](super::Router::on_response_chunk) as they pass.
    Observe,
    /// Forward the response, but pass each body chunk through
    /// [`Router::on_response_data`](super::Router::on_response_data) and send what it returns:
    /// the router rewrites the body's first event (a legacy SSE stream's `endpoint`, whose
    /// session is sealed), holding back at most the observation bound, then passes everything
    /// through untouched. [`ObservedBody`](crate::body::ObservedBody) does it.
    Rewrite,
    /// Do not forward this response: the backend created a conversation the router cannot
    /// record (table full, an id another backend owns, an id the router cannot route, or,
    /// with a shared store, a session whose binding could not be queued for the store).
    /// Answer with the rejection instead, so the client retries.
    Replace(Rejection),
}

/// What to send the client of a chunk given to
/// [`Router::on_response_data`](super::Router::on_response_data).
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    /// Send these bytes (the chunk, or what the router made of it and the chunks it held).
    Send(bytes::Bytes),
    /// Send nothing yet: the router holds the chunk until it can rewrite it.
    Hold,
}

/// Whether the router wants more of a body.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Keep showing chunks.
    More,
    /// The router needs nothing more of this body; stop inspecting it.
    Done,
}

/// Why a request never reached its backend: nothing of it was written (see
/// [`Router::on_undelivered`](super::Router::on_undelivered)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Undelivered {
    /// The connection was refused (or the host is unreachable): nothing listens at the
    /// backend's address, so its process, and every session it held, is gone.
    Refused,
    /// The connection attempt timed out: the backend may be alive but overloaded, and may
    /// still hold its sessions.
    TimedOut,
    /// Any other failure before a byte of the request was written.
    Failed,
}

impl Undelivered {
    /// What a failed connection attempt means: refused, or the host or network unreachable
    /// (nothing listens: [`Refused`](Undelivered::Refused)); timed out
    /// ([`TimedOut`](Undelivered::TimedOut)); anything else ([`Failed`](Undelivered::Failed)).
    pub fn from_io(error: &std::io::Error) -> Undelivered {
        use std::io::ErrorKind::{
            ConnectionRefused, HostUnreachable, NetworkUnreachable, TimedOut,
        };
        match error.kind() {
            ConnectionRefused | HostUnreachable | NetworkUnreachable => Undelivered::Refused,
            TimedOut => Undelivered::TimedOut,
            _ => Undelivered::Failed,
        }
    }
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The response was delivered to its end.
    Completed,
    /// The response, or its stream, was cut short (client gone, backend error, timeout).
    Aborted,
}
