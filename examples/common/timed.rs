//! A request body that must arrive in time (`Config::body_timeout`, `--body-timeout`).
//!
//! The header timeout ends once a request's head has arrived; without a bound on its body, a
//! client that sends a head and then its body a byte every few seconds holds its connection
//! (and the backend connection the body is streamed to) for as long as it likes, and a few
//! thousand such clients hold every connection the proxy serves.
//!
//! The bound is a deadline that moves with the data: the body must have arrived within the
//! timeout of the moment the proxy first waits for it, plus a millisecond for each byte that
//! arrives meanwhile. So an upload at [`MIN_RATE`] or faster is never cut, however large, and a
//! body that trickles slower than that is cut at the timeout or later; a body that came with its
//! head (most MCP requests) arms no timer at all.
//!
//! When the deadline passes, the body fails with [`BodyError::TimedOut`] (the backend
//! connection it was streamed to is closed by hyper, as for any failed body) and its
//! connection's [`BodyTimer`] remembers it, so that the answer is 408 whoever noticed the
//! failure: the router's layer (a small body it reads whole to be able to place it again) or the
//! forwarder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

/// The slowest a request body may arrive and never be cut: bytes a second.
pub const MIN_RATE: u64 = 1_000;

/// The time a byte of a request body earns the rest of it.
const PER_BYTE: Duration = Duration::from_nanos(1_000_000_000 / MIN_RATE);

/// One client connection's bound on its request bodies.
#[derive(Clone, Debug)]
pub struct BodyTimer {
    limit: Duration,
    /// Set when a body of the connection's missed its deadline; read (and cleared) once its
    /// request is answered. (HTTP/1: one request of a connection is answered at a time.)
    expired: Arc<AtomicBool>,
}

impl BodyTimer {
    pub fn new(limit: Duration) -> Self {
        BodyTimer {
            limit,
            expired: Arc::default(),
        }
    }

    /// The bound, for a request's body.
    pub fn time(&self, body: Incoming) -> Timed {
        Timed {
            body,
            clock: Some(Clock {
                timer: self.clone(),
                deadline: None,
            }),
        }
    }

    /// Whether the last request's body missed its deadline (and forget it).
    pub fn expired(&self) -> bool {
        self.expired.swap(false, Ordering::Relaxed)
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

pin_project_lite::pin_project! {
    /// A client's request body, failed with [`BodyError::TimedOut`] if it does not arrive in
    /// time (see the module's doc).
    pub struct Timed {
        #[pin]
        body: Incoming,
        // `None`: not timed.
        clock: Option<Clock>,
    }
}

struct Clock {
    timer: BodyTimer,
    /// Armed when the body is first waited for.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Timed {
    /// `body`, not timed.
    pub fn untimed(body: Incoming) -> Self {
        Timed { body, clock: None }
    }
}

/// Why a request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// Reading it from the client failed (it went away, or sent a malformed body).
    Client(hyper::Error),
    /// It did not arrive in time.
    TimedOut(Duration),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Client(error) => write!(f, "reading the request body failed: {error}"),
            BodyError::TimedOut(limit) => {
                write!(f, "the request body did not arrive within {limit:?}")
            }
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Client(error) => Some(error),
            BodyError::TimedOut(_) => None,
        }
    }
}

impl Body for Timed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let frame = match this.body.poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let Some(clock) = this.clock else {
                    return Poll::Pending;
                };
                let limit = clock.timer.limit;
                let deadline = clock
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(deadline.as_mut().poll(cx));
                clock.timer.expired.store(true, Ordering::Relaxed);
                // Not polled again: the body has failed.
                *this.clock = None;
                return Poll::Ready(Some(Err(BodyError::TimedOut(limit))));
            }
        };
        if let (Some(Ok(frame)), Some(clock)) = (&frame, this.clock.as_mut()) {
            // The data earns the rest of the body time at the minimum rate.
            if let (Some(data), Some(deadline)) = (frame.data_ref(), clock.deadline.as_mut()) {
                let earned = PER_BYTE.saturating_mul(u32::try_from(data.len()).unwrap_or(u32::MAX));
                let moved = deadline.deadline() + earned;
                deadline.as_mut().reset(moved);
            }
        }
        Poll::Ready(frame.map(|frame| frame.map_err(BodyError::Client)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
