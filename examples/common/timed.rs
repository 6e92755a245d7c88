//! A request body that must arrive in time (`Config::body_timeout`, `--body-timeout`).
//!
//! The header timeout ends once a request's head has arrived; without a bound on its body, a
//! client that sends a head and then its body a byte every few seconds holds its connection
//! (and the backend connection the body is streamed to) for as long as it likes, and a few
//! thousand such clients hold every connection the proxy serves.
//!
//! The bound is a deadline that moves with the data: the body must have arrived within the
//! timeout of the moment the proxy first waits for it, plus a millisecond for each byte of it
//! that has arrived (those that came before that moment too). So an upload at [`MIN_RATE`] or
//! faster is never cut, however large; a body that trickles slower than that is cut at the
//! timeout or later; a body that came with its head (most MCP requests) arms no timer at all.
//! The rate is an average: bytes sent early pay for a slower end (a 64 KiB body that comes at
//! once and then stalls is cut at the timeout plus some 65 s). The clock runs while the proxy
//! is not reading too: a backend that reads the body slower than [`MIN_RATE`] holds it back,
//! and the client's upload can time out for it.
//!
//! When the deadline passes, the body fails with [`BodyError::TimedOut`] (the backend
//! connection it was streamed to is closed by hyper, as for any failed body), and its
//! request's [`Ticket`] says so, so that the answer is 408 whoever noticed the failure: the
//! router's layer (a small body it reads whole to be able to place it again) or the
//! forwarder. A ticket names its request: a body that times out after its request was
//! answered (a backend that answers before reading it) says nothing of the next request's.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// The slowest a request body may arrive and never be cut: bytes a second.
pub const MIN_RATE: u64 = 1_000;

/// The time a byte of a request body earns the rest of it.
const PER_BYTE: Duration = Duration::from_nanos(1_000_000_000 / MIN_RATE);

/// One client connection's bound on its request bodies.
#[derive(Clone, Debug)]
pub struct BodyTimer {
    limit: Duration,
    requests: Arc<Requests>,
}

/// A connection's requests, as its bodies' deadlines see them.
#[derive(Debug, Default)]
struct Requests {
    /// The number of the last request timed.
    last: AtomicU64,
    /// The number of the last request whose body missed its deadline (0: none).
    expired: AtomicU64,
}

/// Whether one request's body missed its deadline: [`BodyTimer::time`].
#[derive(Debug)]
pub struct Ticket {
    request: u64,
    requests: Arc<Requests>,
    limit: Duration,
}

impl Ticket {
    /// The timeout the request's body missed, if it did.
    pub fn missed(&self) -> Option<Duration> {
        let expired = self.requests.expired.load(Ordering::Relaxed) == self.request;
        expired.then_some(self.limit)
    }
}

impl BodyTimer {
    pub fn new(limit: Duration) -> Self {
        BodyTimer {
            limit,
            requests: Arc::default(),
        }
    }

    /// The bound, for a request's body, and the ticket that tells whether it was missed.
    pub fn time<B>(&self, body: B) -> (Timed<B>, Ticket) {
        let request = self.requests.last.fetch_add(1, Ordering::Relaxed) + 1;
        let clock = Clock {
            limit: self.limit,
            request,
            requests: self.requests.clone(),
            earned: Duration::ZERO,
            deadline: None,
        };
        let ticket = Ticket {
            request,
            requests: self.requests.clone(),
            limit: self.limit,
        };
        (
            Timed {
                body,
                clock: Some(clock),
            },
            ticket,
        )
    }
}

pin_project_lite::pin_project! {
    /// A client's request body, failed with [`BodyError::TimedOut`] if it does not arrive in
    /// time (see the module's doc).
    pub struct Timed<B> {
        #[pin]
        body: B,
        // `None`: not timed.
        clock: Option<Clock>,
    }
}

struct Clock {
    limit: Duration,
    /// The request's number, told when the deadline passes.
    request: u64,
    requests: Arc<Requests>,
    /// What the body's bytes have earned so far.
    earned: Duration,
    /// Armed when the body is first waited for.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// `body` under `timer` (not timed without one), and its request's ticket.
pub fn time<B>(timer: Option<&BodyTimer>, body: B) -> (Timed<B>, Option<Ticket>) {
    match timer {
        Some(timer) => {
            let (body, ticket) = timer.time(body);
            (body, Some(ticket))
        }
        None => (Timed { body, clock: None }, None),
    }
}

/// Why a request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// Reading it from the client failed (it went away, or sent a malformed body).
    Client(Box<dyn Error + Send + Sync>),
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

impl Error for BodyError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BodyError::Client(error) => Some(&**error),
            BodyError::TimedOut(_) => None,
        }
    }
}

impl<B> Body for Timed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
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
                let until = clock.limit + clock.earned;
                let deadline = clock
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(until)));
                ready!(deadline.as_mut().poll(cx));
                let limit = clock.limit;
                clock
                    .requests
                    .expired
                    .store(clock.request, Ordering::Relaxed);
                // Not polled again: the body has failed.
                *this.clock = None;
                return Poll::Ready(Some(Err(BodyError::TimedOut(limit))));
            }
        };
        if let (Some(Ok(frame)), Some(clock)) = (&frame, this.clock.as_mut()) {
            // The data earns the rest of the body time at the minimum rate.
            if let Some(data) = frame.data_ref() {
                let earned = PER_BYTE.saturating_mul(u32::try_from(data.len()).unwrap_or(u32::MAX));
                clock.earned = clock.earned.saturating_add(earned);
                if let Some(deadline) = clock.deadline.as_mut() {
                    let moved = deadline.deadline() + earned;
                    deadline.as_mut().reset(moved);
                }
            }
        }
        Poll::Ready(frame.map(|frame| frame.map_err(|e| BodyError::Client(e.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
