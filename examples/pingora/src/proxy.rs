//! The router's call protocol on pingora's hooks.
//!
//! | pingora hook | router call |
//! |---|---|
//! | `request_filter` | what no backend is sent is answered here (`hop::check_head`: `CONNECT`, a target that is not a path, a dot-segment, a missing, repeated or invalid `Host`), and the headers `Connection` names removed; then [`Router::route`]: `Forward` keeps the [`Exchange`] in the context; `Reject` is answered here, no backend is contacted |
//! | `upstream_peer` | [`Exchange::backend`] is the peer; a conversation start that failed on a fresh connection (`error_while_proxy`) first finds whether its backend refuses connections now: then [`Router::on_undelivered`] places it on another, else it fails (502) |
//! | `upstream_request_filter` | [`Exchange::request_edits`] (a sealed id: the backend gets its own) |
//! | `fail_to_connect` | [`Router::on_undelivered`]: `Forward` (placed again) retries on its backend; `Reject` is answered by `fail_to_proxy` |
//! | `fail_to_proxy` | answers a rejection; a pinned request that failed on its way to a backend that refuses connections now is [`Router::on_undelivered`] too (its owner died with it: 404, not 502) |
//! | `response_filter` | [`Router::on_response_head_edits`]; `Replace` fails the request, and `fail_to_proxy` answers the rejection instead |
//! | `response_body_filter` | [`Router::on_response_data`] while the exchange observes, then [`Router::on_response_data_end`] |
//! | `logging` | [`Router::on_exchange_end`]: `Completed` without an error, else `Aborted` |
//!
//! `Routed::Lookup` never comes: it is the answer of a router with a shared store, and this one
//! has none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{StatusCode, Version};
use mcp_affinity::BackendId;
use mcp_affinity::router::{
    Data, End, Exchange, HeadEdit, HeadEdits, HeadOutcome, Rejection, Routed, Router, Undelivered,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::hop::{check_head, named_by_connection};
use crate::probe;

/// How long a connection attempt to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle backend connection is pooled: below the 5 s keep-alive of uvicorn (Python
/// MCP servers), so that the proxy never reuses a connection the backend is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// The proxy: the router, and where each backend slot listens.
pub struct McpProxy {
    pub router: Arc<Router>,
    /// By slot (a backend keeps its slot for good: nothing is added or removed at run time).
    pub addrs: Vec<Option<SocketAddr>>,
}

/// What one request carries from hook to hook.
#[derive(Default)]
pub struct Ctx {
    /// The router's state of the request, from `request_filter` to `logging`.
    exchange: Option<Exchange>,
    /// The answer to send instead of a backend's (set where pingora cannot answer itself).
    rejection: Option<Rejection>,
    /// A conversation start failed on a fresh connection to its backend: before it goes
    /// again, `upstream_peer` finds whether that backend died ([`McpProxy::recheck`]).
    recheck: bool,
}

impl McpProxy {
    fn addr_of(&self, backend: BackendId) -> Option<SocketAddr> {
        *self.addrs.get(usize::from(backend.slot()))?
    }
}

#[async_trait]
impl ProxyHttp for McpProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some((status, why)) = refused(session.req_header()) {
            refuse(session, status, why).await?;
            return Ok(true);
        }
        remove_connection_named(session.req_header_mut());
        match self.router.route(session.req_header(), Instant::now()) {
            Routed::Forward(exchange) => {
                ctx.exchange = Some(exchange);
                Ok(false)
            }
            Routed::Reject(rejection) => {
                answer(session, &rejection).await?;
                Ok(true)
            }
            Routed::Lookup(_) => {
                Error::e_explain(InternalError, "the router asked for a shared store")
            }
        }
    }

    async fn upstream_peer(&self, _: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if std::mem::take(&mut ctx.recheck) {
            self.recheck(ctx).await?;
        }
        let backend = ctx.exchange.as_ref().map(Exchange::backend);
        let Some(addr) = backend.and_then(|id| self.addr_of(id)) else {
            return Error::e_explain(InternalError, "no backend for the request");
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.idle_timeout = Some(POOL_IDLE);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(exchange) = &ctx.exchange {
            let edits = exchange.request_edits(upstream_request);
            edit_request(upstream_request, edits)?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(exchange) = ctx.exchange.take() else {
            return e;
        };
        let why = match e.etype() {
            ConnectRefused | ConnectNoRoute => Undelivered::Refused,
            ConnectTimedout => Undelivered::TimedOut,
            _ => Undelivered::Failed,
        };
        ctx.rejection = self.undelivered(ctx, exchange, why);
        // Placed again: pingora asks `upstream_peer` for the new backend.
        e.set_retry(ctx.exchange.is_some());
        e
    }

    /// A request that failed on a reused connection to its backend: what pingora does by
    /// default (it may go again if it is idempotent), and a conversation start too, which
    /// leaves nothing behind that outlives its backend. Sent again to the same backend, it
    /// finds whether that backend died: if the connection is refused, `fail_to_connect`
    /// reports it and the router places the start on another (a new conversation does not
    /// fail with the replica that crashed under it). A start that failed on a fresh
    /// connection goes again only if its backend refuses connections now
    /// ([`recheck`](McpProxy::recheck)): a live backend may have run it.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let starts = ctx
            .exchange
            .as_ref()
            .is_some_and(Exchange::starts_conversation);
        let again = starts || session.req_header().method.is_idempotent();
        // (Never once the client has a head: pingora would write it a second.)
        let unanswered = session.response_written().is_none();
        if again && unanswered && !session.as_ref().retry_buffer_truncated() {
            // (Only the backend's failure: not the client's, nor a rejection of ours.)
            let upstream = *e.esource() == ErrorSource::Upstream && ctx.rejection.is_none();
            if starts && !client_reused && upstream {
                ctx.recheck = true;
                e.set_retry(true);
            } else {
                e.retry.decide_reuse(client_reused);
            }
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn response_filter(
        &self,
        _: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(exchange) = ctx.exchange.as_mut() else {
            return Ok(());
        };
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let (outcome, edits) = self.router.on_response_head_edits(
            exchange,
            upstream_response.status,
            &upstream_response.headers,
            Instant::now(),
        );
        if let HeadOutcome::Replace(rejection) = outcome {
            // The backend's answer must not reach the client: fail the request, and
            // `fail_to_proxy` sends the rejection in its place.
            ctx.rejection = Some(rejection);
            return Error::e_explain(InternalError, "the router replaced the response");
        }
        edit_response(upstream_response, edits)?;
        if is_event_stream(upstream_response) {
            upstream_response.insert_header("x-accel-buffering", "no")?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some(exchange) = ctx.exchange.as_mut() else {
            return Ok(None);
        };
        // Once the router has what it wanted of the body, chunks pass untouched.
        if !exchange.is_observing() {
            return Ok(None);
        }
        if let Some(chunk) = body.take() {
            *body = match self
                .router
                .on_response_data(exchange, chunk, Instant::now())
            {
                Data::Send(bytes) => Some(bytes),
                // Held back (a legacy SSE `endpoint` event to seal): sent when complete.
                Data::Hold => None,
            };
        }
        if end_of_stream {
            // Only a body still held has a rest, and then this chunk was held with it.
            if let Some(rest) = self.router.on_response_data_end(exchange) {
                *body = Some(rest);
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if ctx.rejection.is_none() {
            ctx.rejection = self.died_with_the_request(session, e, ctx).await;
        }
        let code = match ctx.rejection.take() {
            Some(rejection) => match answer(session, &rejection).await {
                Ok(()) => rejection.status().as_u16(),
                Err(_) => 0,
            },
            None => {
                let code = match e.esource() {
                    ErrorSource::Upstream => 502,
                    // The client went away (or broke the protocol): nobody to answer.
                    ErrorSource::Downstream => 0,
                    _ => 500,
                };
                if code > 0 {
                    let _ = session.respond_error(code).await;
                }
                code
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(exchange) = ctx.exchange.take() {
            let end = if e.is_none() {
                End::Completed
            } else {
                End::Aborted
            };
            self.router.on_exchange_end(exchange, end, Instant::now());
        }
    }
}

impl McpProxy {
    /// A request pinned by its session (or task) failed on its way, before any answer: if its
    /// backend refuses connections now, the backend died with it, and the session with the
    /// backend. Then it is reported as undelivered for that reason, and the client gets the
    /// owner-gone 404 that makes it start over (a 502 would leave it retrying a dead session).
    async fn died_with_the_request(
        &self,
        session: &Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> Option<Rejection> {
        let exchange = ctx.exchange.as_ref()?;
        let pinned = !exchange.is_placeable();
        if !pinned || *e.esource() != ErrorSource::Upstream || session.response_written().is_some()
        {
            return None;
        }
        if !self.refuses(exchange.backend()).await {
            return None;
        }
        let exchange = ctx.exchange.take()?;
        // (Never placed again: a session's request is not moved.)
        self.undelivered(ctx, exchange, Undelivered::Refused)
    }

    /// Reports `exchange` undelivered for `why`: placed again, the next exchange goes back in
    /// `ctx`; else the rejection to answer, if any.
    fn undelivered(
        &self,
        ctx: &mut Ctx,
        exchange: Exchange,
        why: Undelivered,
    ) -> Option<Rejection> {
        match self.router.on_undelivered(exchange, why, Instant::now()) {
            Routed::Forward(next) => {
                ctx.exchange = Some(next);
                None
            }
            Routed::Reject(rejection) => Some(rejection),
            // (Never: the answer of a router with a shared store, and this one has none.)
            Routed::Lookup(_) => None,
        }
    }

    /// Whether `backend` refuses connections now: it died ([`probe::refuses`], the hyper
    /// proxy's probe).
    async fn refuses(&self, backend: BackendId) -> bool {
        match self.addr_of(backend) {
            Some(addr) => probe::refuses(addr).await,
            None => false,
        }
    }

    /// A conversation start that failed on a fresh connection, before it goes again: if its
    /// backend refuses connections now, it died under the start, which the router places on
    /// another (or rejects: `fail_to_proxy` answers). If the backend still accepts them, the
    /// start may have run there, and fails (502), as through the hyper proxy.
    async fn recheck(&self, ctx: &mut Ctx) -> Result<()> {
        let Some(exchange) = ctx.exchange.take() else {
            return Ok(());
        };
        if !self.refuses(exchange.backend()).await {
            ctx.exchange = Some(exchange);
            let mut e = Error::new_up(ConnectionClosed);
            e.context =
                Some("the backend failed under a conversation start, and still listens".into());
            return Err(e);
        }
        ctx.rejection = self.undelivered(ctx, exchange, Undelivered::Refused);
        if ctx.exchange.is_none() {
            return Error::e_explain(InternalError, "the router did not place the start again");
        }
        Ok(())
    }
}

/// Answers a request the proxy refuses to pass on ([`refused`]) with `why` as plain text,
/// and closes the connection (its body, if any, is left unread).
async fn refuse(session: &mut Session, status: StatusCode, why: &'static str) -> Result<()> {
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    head.set_content_length(why.len())?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(head), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(why.as_bytes())), true)
        .await
}

/// What the proxy answers itself, sending no backend ([`check_head`], on what pingora shows
/// the hooks of the request).
fn refused(head: &RequestHeader) -> Option<(StatusCode, &'static str)> {
    // Pingora keeps a target that is neither origin-form nor absolute-form (`a/../x`, `?x`,
    // `*`) as the bytes it received, for the wire, and as `/` in its `Uri`, which is all
    // `check_head` and the router read: such a target would reach a backend unchecked.
    let target = head.raw_path();
    if !(target.starts_with(b"/") || is_absolute_http(target)) {
        return Some((
            StatusCode::BAD_REQUEST,
            "the request target is not a path\n",
        ));
    }
    // Checked as HTTP/1.1, whatever it came as: pingora sends every request on as HTTP/1.1,
    // which must have a `Host`. (No `Host` to put in place comes back: pingora leaves an
    // absolute-form target's authority out of its `Uri`, and refuses one that is not the
    // `Host`.)
    check_head(&head.method, &head.uri, Version::HTTP_11, &head.headers).err()
}

/// Removes the headers `Connection` names: they are this hop's alone, and pingora does not
/// pass them on, so the router must not route by them either (`Connection: Mcp-Session-Id`
/// would have a request pinned by a session its backend never sees). Those pingora reads to
/// frame and answer the request stay for it to read (a `Content-Length` removed here would
/// leave the body in the stream, read as the next request); it removes them itself later.
fn remove_connection_named(head: &mut RequestHeader) {
    for name in named_by_connection(&head.headers) {
        if !pingora_reads(&name) {
            head.remove_header(&name);
        }
    }
}

/// Whether pingora reads the header `name` of a client's request to frame it or to answer it.
fn pingora_reads(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "te"
            | "trailer"
            | "expect"
    )
}

/// Whether `target` is absolute-form with an `http` or `https` scheme (its path is the `Uri`'s;
/// pingora has checked its authority against `Host`).
fn is_absolute_http(target: &[u8]) -> bool {
    let starts = |prefix: &[u8]| {
        target
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    starts(b"http://") || starts(b"https://")
}

/// Sends the router's rejection: its status, headers and (JSON-RPC) body.
async fn answer(session: &mut Session, rejection: &Rejection) -> Result<()> {
    let (head, body) = rejection.to_response().into_parts();
    let mut head = ResponseHeader::from(head);
    head.set_content_length(body.len())?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

fn edit_request(head: &mut RequestHeader, edits: HeadEdits) -> Result<()> {
    for edit in edits {
        match edit {
            HeadEdit::Insert(name, value) => head.insert_header(name, value)?,
            HeadEdit::Append(name, value) => _ = head.append_header(name, value)?,
            HeadEdit::Remove(name) => _ = head.remove_header(&name),
            HeadEdit::Uri(uri) => head.set_uri(uri),
            _ => {}
        }
    }
    Ok(())
}

fn edit_response(head: &mut ResponseHeader, edits: HeadEdits) -> Result<()> {
    for edit in edits {
        match edit {
            HeadEdit::Insert(name, value) => head.insert_header(name, value)?,
            HeadEdit::Append(name, value) => _ = head.append_header(name, value)?,
            HeadEdit::Remove(name) => _ = head.remove_header(&name),
            _ => {}
        }
    }
    Ok(())
}

fn is_event_stream(head: &ResponseHeader) -> bool {
    head.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}
