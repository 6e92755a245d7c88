//! The response body of an [`Affinity`](super::Affinity) service: the backend's, observed by
//! the router, or the layer's own answer.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{Clock, ObservedBody, hint_plus};
use crate::router::Rejection;
use crate::table::SessionTable;

/// The router's rejection as a response.
pub(super) fn reject<B: Body, C: Clock, T: SessionTable>(
    rejection: &Rejection,
) -> Response<AffinityBody<B, C, T>> {
    rejection.to_response().map(AffinityBody::local)
}

/// A plain-text answer of the layer's own.
pub(super) fn local<B: Body, C: Clock, T: SessionTable>(
    status: StatusCode,
    text: &'static str,
) -> Response<AffinityBody<B, C, T>> {
    let mut response = Response::new(AffinityBody::local(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project! {
    /// The body of a response from an [`Affinity`] service: the backend's, observed by the
    /// router ([`ObservedBody`]), or one the layer answered itself (a rejection).
    pub struct AffinityBody<B, C, T>
    where
        B: Body,
        C: Clock,
        T: SessionTable,
    {
        #[pin]
        inner: Answer<B, C, T>,
    }
}

pin_project! {
    #[project = AnswerProj]
    enum Answer<B, C, T>
    where
        B: Body,
        C: Clock,
        T: SessionTable,
    {
        Backend { #[pin] body: ObservedBody<FromBackend<B>, C, T> },
        Local { data: Option<Bytes> },
    }
}

pin_project! {
    /// A backend's response body as the router reads it: as it comes, or with its first frame
    /// read ahead (a conversation start's: see `Shared::deliver`), in a box, so that reading
    /// it did not pin it where it was. (The box keeps this as small as the body itself.)
    #[project = FromBackendProj]
    pub(super) enum FromBackend<B: Body> {
        Direct { #[pin] body: B },
        ReadAhead { ahead: Pin<Box<ReadAhead<B>>> },
    }
}

pin_project! {
    /// A body and its first frame, read ahead: a frame, an error, or its end.
    pub(super) struct ReadAhead<B: Body> {
        first: Option<Option<Result<Frame<Bytes>, B::Error>>>,
        #[pin]
        body: B,
    }
}

impl<B: Body<Data = Bytes>> FromBackend<B> {
    /// `body` as it comes.
    pub(super) fn direct(body: B) -> Self {
        FromBackend::Direct { body }
    }

    /// Reads `body`'s first frame that is not an empty data frame (at most
    /// [`EMPTY_FRAMES_SKIPPED`] of those are passed over, then the next frame is the first),
    /// or its end, or its error.
    pub(super) async fn read_ahead(body: B) -> Self {
        let mut ahead = Box::pin(ReadAhead { first: None, body });
        let mut skipped = 0;
        let first = loop {
            let frame =
                std::future::poll_fn(|cx| ahead.as_mut().project().body.poll_frame(cx)).await;
            match &frame {
                Some(Ok(f))
                    if skipped < EMPTY_FRAMES_SKIPPED
                        && f.data_ref().is_some_and(Bytes::is_empty) =>
                {
                    skipped += 1;
                }
                _ => break frame,
            }
        };
        *ahead.as_mut().project().first = Some(first);
        FromBackend::ReadAhead { ahead }
    }

    /// Whether the body failed, or ended, before its first frame: nothing of it reached
    /// anyone. (An empty answer to a conversation start is no answer: a close-delimited body
    /// ends that way when its backend dies.)
    pub(super) fn nothing_came(&self) -> bool {
        matches!(self, FromBackend::ReadAhead { ahead } if matches!(ahead.first, Some(Some(Err(_)) | None)))
    }
}

/// How many empty data frames reading a body's first frame passes over (they carry nothing
/// to tell a live stream by), before it takes the next frame as the first: a body that
/// yields empty frames without end, each at once, would otherwise hold the head and keep
/// the task polling.
const EMPTY_FRAMES_SKIPPED: usize = 16;

impl<B: Body<Data = Bytes>> Body for FromBackend<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            FromBackendProj::Direct { body } => body.poll_frame(cx),
            FromBackendProj::ReadAhead { ahead } => {
                let ahead = ahead.as_mut().project();
                match ahead.first.take() {
                    Some(first) => Poll::Ready(first),
                    None => ahead.body.poll_frame(cx),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FromBackend::Direct { body } => body.is_end_stream(),
            FromBackend::ReadAhead { ahead } => match &ahead.first {
                Some(first) => first.is_none(),
                None => ahead.body.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FromBackend::Direct { body } => body.size_hint(),
            FromBackend::ReadAhead { ahead } => {
                let first = match &ahead.first {
                    Some(Some(Ok(frame))) => frame.data_ref().map_or(0, |d| d.len() as u64),
                    // The body ended with what was read.
                    Some(None) => return SizeHint::with_exact(0),
                    // It failed: its reader must poll for the error (with an exact 0, hyper
                    // would write an empty answer and never poll).
                    Some(Some(Err(_))) => return SizeHint::default(),
                    None => 0,
                };
                hint_plus(ahead.body.size_hint(), first)
            }
        }
    }
}

impl<B: Body, C: Clock, T: SessionTable> AffinityBody<B, C, T> {
    pub(super) fn backend(body: ObservedBody<FromBackend<B>, C, T>) -> Self {
        AffinityBody {
            inner: Answer::Backend { body },
        }
    }

    fn local(data: Bytes) -> Self {
        AffinityBody {
            inner: Answer::Local {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Whether the layer answered this response itself (a rejection), without a backend.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Answer::Local { .. })
    }
}

impl<B, C, T> Body for AffinityBody<B, C, T>
where
    B: Body<Data = Bytes>,
    C: Clock,
    T: SessionTable,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            AnswerProj::Backend { body } => body.poll_frame(cx),
            AnswerProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Answer::Backend { body } => body.is_end_stream(),
            Answer::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Answer::Backend { body } => body.size_hint(),
            Answer::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B: Body, C: Clock, T: SessionTable> fmt::Debug for AffinityBody<B, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityBody")
            .field("local", &self.is_local())
            .finish_non_exhaustive()
    }
}
