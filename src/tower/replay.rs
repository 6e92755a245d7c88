//! The request body of each delivery attempt: streamed once, or kept whole (within the
//! [replay limit](super::AffinityLayer::replay_limit)) and sent again when the request is
//! placed on another backend.

use std::fmt;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Upstream;

/// The bodies of the delivery attempts of one request.
pub(super) enum Attempts<B> {
    /// Kept whole: every attempt sends it.
    Kept(Kept),
    /// Streamed as it comes: one attempt.
    Once(Option<B>),
}

impl<B> Attempts<B> {
    /// The client's body, to be streamed on the one attempt it is kept for.
    pub(super) fn once(body: B) -> Self {
        Attempts::Once(Some(body))
    }

    /// The most bytes the streamed body announces (`None`: no bound, or not streamed).
    pub(super) fn announced(&self) -> Option<u64>
    where
        B: Body,
    {
        match self {
            Attempts::Once(Some(body)) => body.size_hint().upper(),
            _ => None,
        }
    }

    /// The streamed body, taken to be read whole instead (`None`: read already, or sent).
    pub(super) fn take_streamed(&mut self) -> Option<B> {
        match self {
            Attempts::Once(once) => once.take(),
            Attempts::Kept(_) => None,
        }
    }

    /// Whether another attempt can send the body.
    pub(super) fn can_send(&self) -> bool {
        match self {
            Attempts::Kept(_) => true,
            Attempts::Once(once) => once.is_some(),
        }
    }

    /// The head and body of the next attempt, to `upstream`: a copy of `head` and the kept
    /// body, or `head` itself, taken, and the streamed body (`None` once that was sent).
    pub(super) fn next(
        &mut self,
        head: &mut Option<Parts>,
        upstream: Upstream,
    ) -> Option<(Parts, ReplayBody<B>)> {
        let (head, inner) = match self {
            Attempts::Kept(kept) => (head.clone()?, kept.body()),
            Attempts::Once(once) => {
                // (The body first: a spent one leaves the head where it is.)
                let body = once.take()?;
                (head.take()?, Replay::Streamed { body })
            }
        };
        Some((
            head,
            ReplayBody {
                inner,
                upstream: Some(upstream),
            },
        ))
    }
}

/// A request body read whole, to be sent again.
pub(super) struct Kept {
    data: Bytes,
    /// Boxed: rare, and large for what every request carries.
    trailers: Option<Box<HeaderMap>>,
}

impl Kept {
    fn body<B>(&self) -> Replay<B> {
        Replay::Kept {
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            trailers: self.trailers.clone(),
        }
    }
}

/// Reads a body that announced at most `limit` bytes; `None` if it failed or grew past that.
pub(super) async fn keep<B: Body<Data = Bytes>>(body: B, limit: u64) -> Option<Kept> {
    let mut body = pin!(body);
    let mut data = BytesMut::new();
    let mut single: Option<Bytes> = None;
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.ok()?;
        match frame.into_data() {
            Ok(chunk) => {
                // One chunk (the usual case) is kept as it came, without a copy.
                match single.take() {
                    None if data.is_empty() => single = Some(chunk),
                    first => {
                        if let Some(first) = first {
                            data.extend_from_slice(&first);
                        }
                        data.extend_from_slice(&chunk);
                    }
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok().map(Box::new),
        }
        let len = single.as_ref().map_or(data.len(), Bytes::len);
        if len as u64 > limit {
            return None;
        }
    }
    Some(Kept {
        data: single.unwrap_or_else(|| data.freeze()),
        trailers,
    })
}

pin_project! {
    /// The request body the inner service gets: the client's, streamed as it comes, or, for a
    /// request that may be placed again, the body read whole before the first attempt and
    /// sent again on each. It carries where the request goes: [`upstream`](ReplayBody::upstream).
    pub struct ReplayBody<B> {
        #[pin]
        inner: Replay<B>,
        upstream: Option<Upstream>,
    }
}

pin_project! {
    #[project = ReplayProj]
    enum Replay<B> {
        Kept { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
        Streamed { #[pin] body: B },
    }
}

impl<B> ReplayBody<B> {
    /// `body`, streamed as it comes and never kept: what the inner service gets for a
    /// request the layer did not keep. For calling that service without the layer (a route
    /// the router should not see, a test).
    pub fn streamed(body: B) -> Self {
        ReplayBody {
            inner: Replay::Streamed { body },
            upstream: None,
        }
    }

    /// Where the layer sends the request: the backend the router chose (`None` only for a
    /// body made with [`streamed`](ReplayBody::streamed), without the layer).
    ///
    /// The body carries it, not the request's extensions: an extension costs every request
    /// three allocations (the extension map, its table and the boxed value; about 800
    /// instructions per request in `examples/proxy`, by callgrind, an eighth of what the
    /// router added to it), and the body is the layer's own type anyway. Read it before a
    /// middleware replaces the body.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.as_ref()
    }

    /// Whether this is a body kept whole (sent again on another attempt).
    pub fn is_kept(&self) -> bool {
        matches!(self.inner, Replay::Kept { .. })
    }
}

impl<B: Body<Data = Bytes>> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            ReplayProj::Kept { data, trailers } => match data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t)))),
            },
            ReplayProj::Streamed { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Replay::Kept { data, trailers } => data.is_none() && trailers.is_none(),
            Replay::Streamed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Replay::Kept { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Replay::Streamed { body } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("kept", &self.is_kept())
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}
