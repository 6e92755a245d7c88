//! A backend connection dedicated to one client connection, driven in that connection's own
//! task (issue #13).
//!
//! Through the pooled client, every request is handed to the task that drives a pooled
//! backend connection, and its answer handed back: two cross-task wake-ups per call, often
//! across cores, and a pool checkout under a lock. A keep-alive HTTP/1.1 client sends one
//! request at a time, so once it has sent two requests in a row to the same backend, its
//! client connection opens a backend connection of its own to that backend and drives it in
//! the same task; the following requests to that backend go through it, the others through
//! the pool. Its answers' bodies are looked ahead in ([`LookAhead`]), so that an answer's last
//! chunk and the end of its body go to the client in one write.
//!
//! The rules, each for a reason:
//! - **Never a request lost or doubled.** A request goes to the dedicated connection only when
//!   that connection is ready; if it turns out not to be (it closed a moment ago), hyper hands
//!   the request back unsent and it goes through the pool. A failure after the request was
//!   written is reported as the pool reports one (it may have run).
//! - **Never a connection the backend is closing.** One idle (answered, and given nothing
//!   since) for the pool's idle timeout (below uvicorn's 5 s keep-alive) is closed, as the
//!   pool closes its own; one found past it is never used.
//! - **Bounded, and no churn.** At most [`Limits::max`] dedicated connections in the process;
//!   past that, requests use the pool. Each closes with its client connection, when its
//!   backend closes it, or when it has been idle for the timeout. A client connection that
//!   turns to another backend keeps its dedicated connection until then (the pool serves it
//!   meanwhile): switching never opens a connection per switch. One whose dedicated
//!   connection idled out before serving anything opens no other for the rest of its life:
//!   the pool serves it (its requests come further apart than the idle timeout, or it
//!   turned to another backend, or its client paused longer than that once).
//! - **Nothing else changes.** The router decides as before; the layer sees the same answers
//!   and errors; a backend removed or restarted gets a new id, so its dedicated connection is
//!   no longer chosen.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Buf;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mcp_affinity::BackendId;
use mcp_affinity::tower::ReplayBody;
use tokio::net::TcpStream;

type RequestBody = ReplayBody<super::RequestBody>;

/// The answer of a request sent on a dedicated connection: the response, or the error with
/// the request when it was not sent.
pub type Answer = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Response<Incoming>,
                    hyper::client::conn::TrySendError<Request<RequestBody>>,
                >,
            > + Send,
    >,
>;

/// What every dedicated connection of the process shares: their count and bounds.
#[derive(Debug)]
pub struct Limits {
    open: AtomicUsize,
    /// The most dedicated connections open at once (0: none).
    pub max: usize,
    /// A dedicated connection idle for this long is closed, not used.
    pub idle: Duration,
}

impl Limits {
    pub fn new(max: usize, idle: Duration) -> Limits {
        Limits {
            open: AtomicUsize::new(0),
            max,
            idle,
        }
    }

    /// Whether there are dedicated connections at all: a bound, and an idle timeout to close
    /// them with.
    pub fn enabled(&self) -> bool {
        self.max > 0 && !self.idle.is_zero()
    }

    /// How many dedicated connections are open (or opening) now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One client connection's dedicated backend connection, if any.
pub struct Dedicated {
    limits: std::sync::Arc<Limits>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The backend the last request went to.
    last: Option<BackendId>,
    /// A dedicated connection idled out before serving anything: open no other.
    given_up: bool,
    conn: Option<Conn>,
    /// The client connection's task, to wake when a connection is opened.
    waker: Option<Waker>,
}

struct Conn {
    backend: BackendId,
    /// `None` while connecting.
    sender: Option<http1::SendRequest<RequestBody>>,
    driver: Driver,
    /// Ready and given nothing since [`Dedicated::poll_drive`] saw it so, with `expiry` armed
    /// from then (`false`: connecting, busy, or ready a moment ago and not yet seen so).
    idle: bool,
    /// Fires when it has been idle for the timeout.
    expiry: Pin<Box<tokio::time::Sleep>>,
    /// Whether it was given a request.
    served: bool,
    _counted: Counted,
}

/// A backend connection: what sends on it, and what drives it.
type Handshake = (http1::SendRequest<RequestBody>, Connection);
type Connection = http1::Connection<TokioIo<TcpStream>, RequestBody>;

enum Driver {
    Connecting(Pin<Box<dyn Future<Output = Result<Handshake, String>> + Send>>),
    Running(Pin<Box<Connection>>),
}

/// One open dedicated connection, in [`Limits::open`] until dropped.
struct Counted(std::sync::Arc<Limits>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Dedicated {
    pub fn new(limits: std::sync::Arc<Limits>) -> Dedicated {
        Dedicated {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// Sends `request` for `backend` on the dedicated connection if it leads there and is
    /// ready; otherwise gives the request back for the pool, and opens a dedicated connection
    /// to `backend` (at `address`, `host:port`) for the requests after it if this is the second
    /// request in a row that goes there.
    // The request given back is large, and moved once: boxing it would allocate per request.
    #[allow(clippy::result_large_err)]
    pub fn try_send(
        &self,
        backend: BackendId,
        address: impl FnOnce() -> Option<String>,
        request: Request<RequestBody>,
    ) -> Result<Answer, Request<RequestBody>> {
        let mut state = self.state.lock().expect("never poisoned");
        let second = state.last.replace(backend) == Some(backend);
        let given_up = state.given_up;
        match &mut state.conn {
            Some(conn) if conn.backend == backend => match &mut conn.sender {
                Some(sender) if sender.is_ready() => {
                    // The idle timer, not yet seen by `poll_drive`, may have fired.
                    let fresh = !conn.idle || !conn.expiry.is_elapsed();
                    if fresh {
                        conn.idle = false;
                        conn.served = true;
                        return Ok(Box::pin(sender.try_send_request(request)));
                    }
                    // Idle long enough that the backend may be closing it: replaced.
                }
                // Closed: replaced.
                Some(sender) if sender.is_closed() => {}
                // Connecting, or still busy with the last answer: the pool takes this one.
                _ => return Err(request),
            },
            // Another backend's: kept until it idles out.
            Some(_) => return Err(request),
            None if !second || given_up => return Err(request),
            None => {}
        }
        // The second request in a row to `backend` (or its dedicated connection is spent):
        // open one for the next.
        state.conn = None;
        let Some(address) = address() else {
            return Err(request);
        };
        if self.limits.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max {
            self.limits.open.fetch_sub(1, Ordering::Relaxed);
            return Err(request);
        }
        let counted = Counted(self.limits.clone());
        state.conn = Some(Conn {
            backend,
            sender: None,
            driver: Driver::Connecting(Box::pin(connect(address))),
            idle: false,
            expiry: Box::pin(tokio::time::sleep(self.limits.idle)),
            served: false,
            _counted: counted,
        });
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        Err(request)
    }

    /// Drives the dedicated connection (connecting, then serving it until it closes or idles
    /// out). Polled by the client connection's task along with the client connection; never
    /// ready.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock().expect("never poisoned");
        let State {
            conn,
            waker,
            given_up,
            ..
        } = &mut *state;
        if let Some(open) = conn {
            match open.poll_open(cx, self.limits.idle) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Closed::IdleUnused) => *given_up = true,
                Poll::Ready(Closed::Other) => {}
            }
            *conn = None;
        }
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Drives the dedicated connection until the future is dropped.
    pub fn drive(self: std::sync::Arc<Self>) -> impl Future<Output = ()> + Send {
        std::future::poll_fn(move |cx| self.poll_drive(cx))
    }
}

/// Why a dedicated connection closed.
enum Closed {
    /// It idled out before it served anything.
    IdleUnused,
    /// Anything else: closed by either end, failed, or idled out after serving.
    Other,
}

impl Conn {
    /// Drives the connection: `Ready` once it is closed, failed or idle for `idle`.
    fn poll_open(&mut self, cx: &mut Context<'_>, idle: Duration) -> Poll<Closed> {
        loop {
            match &mut self.driver {
                Driver::Connecting(connecting) => match connecting.as_mut().poll(cx) {
                    Poll::Ready(Ok((sender, connection))) => {
                        self.sender = Some(sender);
                        self.driver = Driver::Running(Box::pin(connection));
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Closed::Other),
                    Poll::Pending => return Poll::Pending,
                },
                // Closed by either end, or failed: the pool serves what comes next.
                Driver::Running(connection) => match connection.as_mut().poll(cx) {
                    Poll::Ready(_) => return Poll::Ready(Closed::Other),
                    Poll::Pending => break,
                },
            }
        }
        // Idle since it became ready: the timer runs from then, and closes it at the timeout.
        if !self.sender.as_ref().is_some_and(|s| s.is_ready()) {
            self.idle = false;
            return Poll::Pending;
        }
        if !self.idle {
            self.idle = true;
            let deadline = tokio::time::Instant::now() + idle;
            self.expiry.as_mut().reset(deadline);
        }
        ready!(self.expiry.as_mut().poll(cx));
        Poll::Ready(if self.served {
            Closed::Other
        } else {
            Closed::IdleUnused
        })
    }
}

/// A TCP connection to `address` (2 s at most, `TCP_NODELAY`), with an HTTP/1.1 handshake.
async fn connect(address: String) -> Result<Handshake, String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&address))
        .await
        .map_err(|_| format!("{address}: connect timed out"))?
        .map_err(|e| format!("{address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    http1::Builder::new()
        .max_buf_size(super::BUFFER_LIMIT)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{address}: {e}"))
}

pin_project_lite::pin_project! {
    /// The body of an answer on a dedicated connection, which tells its end with its last data
    /// frame when the connection has read that end already.
    ///
    /// A backend usually writes an answer's last chunk and the end of its body together, but
    /// the client connection hears of the end only once the dedicated connection, polled in
    /// the same task, has decoded it; and hyper decodes one frame ahead at most. Without a
    /// look ahead, the client connection writes the last chunk, finds the body not yet ended,
    /// and writes the end of the body in a second write: a second system call here, and a
    /// second read and wake-up at the client (issue #13). So after each data frame, this lets
    /// the connection read on and looks at what comes next, without waiting for it.
    pub struct LookAhead<B: Body, D = Dedicated> {
        #[pin]
        inner: B,
        // A frame that came while looking ahead: returned next.
        next: Option<Result<Frame<B::Data>, B::Error>>,
        // The inner body ended while looking ahead.
        ended: bool,
        // The connection the body comes on (`None`: no looking ahead).
        connection: Option<std::sync::Arc<D>>,
    }
}

/// A backend connection driven in the task of the client connection it serves: what a
/// [`LookAhead`] body lets read on.
pub trait Drive {
    /// Drives the connection; never ready while it is open, and it registers the task to be
    /// woken as the connection's own polling does.
    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()>;
}

impl Drive for Dedicated {
    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        Dedicated::poll_drive(self, cx)
    }
}

impl<B: Body, D> LookAhead<B, D> {
    /// `inner`, coming on `connection` (`None`: passed on as it is).
    pub fn new(inner: B, connection: Option<std::sync::Arc<D>>) -> Self {
        LookAhead {
            inner,
            next: None,
            ended: false,
            connection,
        }
    }
}

impl<B: Body, D: Drive> Body for LookAhead<B, D> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = match this.next.take() {
            Some(frame) => frame,
            None if *this.ended => return Poll::Ready(None),
            None => match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(frame) => frame,
                None => {
                    *this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        let data = frame.as_ref().is_ok_and(Frame::is_data);
        if let Some(connection) = this.connection.as_ref().filter(|_| data) {
            if !*this.ended && !this.inner.is_end_stream() {
                // Ready only once closed; it registers this task to be woken, as the body
                // does.
                let _ = connection.poll_drive(cx);
                match this.inner.as_mut().poll_frame(cx) {
                    Poll::Ready(None) => *this.ended = true,
                    Poll::Ready(Some(next)) => *this.next = Some(next),
                    Poll::Pending => {}
                }
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = match &self.next {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |data| data.remaining() as u64),
            _ => 0,
        };
        if self.ended {
            return SizeHint::with_exact(held);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}
