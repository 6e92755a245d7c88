//! A round-robin front for the fleet tests, as a plain L7 balancer on 127.0.0.1: each HTTP
//! request goes to the next upstream in turn (no affinity, no cookies) on a connection of its
//! own; bodies stream both ways as they come (SSE works); an upstream whose connection fails
//! (nothing was sent) is skipped for the next; a request that fails on its way gets 502. It
//! logs what it saw ([`Event`]) for the tests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// What the front saw, in order, at an upstream: a request sent, presenting a session id (the
/// `Mcp-Session-Id` header, a legacy SSE message's `session_id` / `sessionId`, a 2026-07-28
/// task's `Mcp-Name` on a `tasks/*` request) or none; the status of its answer (with that id,
/// and whether the request was a `DELETE`); an answer that
/// gave the client a session id (that header, a legacy SSE stream's `endpoint` event); a
/// request, or its answer's body, cut on its way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Sent(usize, Option<String>),
    Answered(usize, u16, Option<String>, bool),
    Minted(usize, String),
    Cut(usize, Option<String>),
}

struct Shared {
    upstreams: Vec<SocketAddr>,
    next: AtomicUsize,
    log: Mutex<Vec<Event>>,
}

impl Shared {
    fn log(&self, event: Event) {
        self.log.lock().unwrap().push(event);
    }
}

/// The front; dropping it stops accepting.
pub struct Front {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Starts a front before `upstreams`.
    pub async fn start(upstreams: Vec<SocketAddr>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("the front's address");
        let shared = Arc::new(Shared {
            upstreams,
            next: AtomicUsize::new(0),
            log: Mutex::default(),
        });
        let state = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(forward(state, req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                tokio::spawn(http.serve_connection(TokioIo::new(stream), service));
            }
        });
        Front {
            addr,
            shared,
            accept,
        }
    }

    /// How many upstreams it sends to.
    pub fn upstreams(&self) -> usize {
        self.shared.upstreams.len()
    }

    /// What it saw so far.
    pub fn log(&self) -> Vec<Event> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The value of a `session_id` or `sessionId` parameter in `text`, up to `&` or a line end.
fn session_param(text: &str) -> Option<String> {
    let (_, rest) = text
        .split_once("session_id=")
        .or_else(|| text.split_once("sessionId="))?;
    Some(rest.split(['&', '\r', '\n']).next()?.to_string())
}

type FrontBody = Either<Watched, Full<Bytes>>;

async fn forward(shared: Arc<Shared>, req: Request<Incoming>) -> Response<FrontBody> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let task = header("mcp-method")
        .filter(|m| m.starts_with("tasks/"))
        .and(header("mcp-name"));
    let token = match header("mcp-session-id").or(task) {
        Some(id) => Some(id.to_string()),
        None => req.uri().query().and_then(session_param),
    };
    let n = shared.upstreams.len();
    let first = shared.next.fetch_add(1, Ordering::SeqCst);
    for upstream in (first..first + n).map(|i| i % n) {
        // Refused (or reset while the upstream closes its listener): nothing was sent.
        let Ok(stream) = TcpStream::connect(shared.upstreams[upstream]).await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let Ok((mut send, connection)) = hyper::client::conn::http1::handshake(io).await else {
            continue;
        };
        tokio::spawn(connection);
        shared.log(Event::Sent(upstream, token.clone()));
        let get = req.method() == hyper::Method::GET;
        let req_method = req.method().clone();
        let response = match send.send_request(req).await {
            Ok(response) => response,
            // The client's own body failed: it went away, not the upstream.
            Err(e) if e.is_user() => return answer(StatusCode::BAD_REQUEST),
            Err(_) => {
                shared.log(Event::Cut(upstream, token));
                return answer(StatusCode::BAD_GATEWAY);
            }
        };
        let delete = req_method == hyper::Method::DELETE;
        let status = response.status().as_u16();
        shared.log(Event::Answered(upstream, status, token.clone(), delete));
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        let minted = header("mcp-session-id").filter(|_| token.is_none());
        let minted = minted.map(str::to_string);
        if let Some(minted) = &minted {
            shared.log(Event::Minted(upstream, minted.clone()));
        }
        // A legacy SSE stream: its `endpoint` event names its session.
        let stream = header("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
        let sniff = (get && token.is_none() && stream).then(Vec::new);
        let (token, shared) = (token.or(minted), shared.clone());
        let watched = |inner| Watched {
            inner,
            shared,
            upstream,
            token,
            sniff,
        };
        return response.map(|inner| Either::Left(watched(inner)));
    }
    answer(StatusCode::BAD_GATEWAY)
}

fn answer(status: StatusCode) -> Response<FrontBody> {
    let body = Full::new(Bytes::from(format!("front: {status}\n")));
    let mut response = Response::new(Either::Right(body));
    *response.status_mut() = status;
    response
}

/// An upstream's answer on its way to the client: logs a failure, and the session of a legacy
/// SSE stream's `endpoint` event (read from a copy of the first bytes, nothing held back).
pub struct Watched {
    inner: Incoming,
    shared: Arc<Shared>,
    upstream: usize,
    token: Option<String>,
    sniff: Option<Vec<u8>>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match (&frame, this.sniff.as_mut()) {
            (Some(Err(_)), _) => this
                .shared
                .log(Event::Cut(this.upstream, this.token.clone())),
            (Some(Ok(frame)), Some(held)) => {
                held.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
                let text = String::from_utf8_lossy(held);
                // The first event (`endpoint`) has ended.
                if text.contains("\n\n") || text.contains("\r\n\r\n") || held.len() > 4096 {
                    this.token = session_param(&text);
                    if let Some(token) = &this.token {
                        this.shared.log(Event::Minted(this.upstream, token.clone()));
                    }
                    this.sniff = None;
                }
            }
            _ => {}
        }
        Poll::Ready(frame)
    }
}
