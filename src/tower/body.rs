//! The response body of an [`Affinity`](super::Affinity) service: the backend's, observed by
//! the router, or the layer's own answer.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{Clock, ObservedBody};
use crate::router::Rejection;
use crate::table::SessionTable;

/// The router's rejection as a response.
pub(super) fn reject<B, C: Clock, T: SessionTable>(
    rejection: &Rejection,
) -> Response<AffinityBody<B, C, T>> {
    rejection.to_response().map(AffinityBody::local)
}

/// A plain-text answer of the layer's own.
pub(super) fn local<B, C: Clock, T: SessionTable>(
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
        C: Clock,
        T: SessionTable,
    {
        Backend { #[pin] body: ObservedBody<B, C, T> },
        Local { data: Option<Bytes> },
    }
}

impl<B, C: Clock, T: SessionTable> AffinityBody<B, C, T> {
    pub(super) fn backend(body: ObservedBody<B, C, T>) -> Self {
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

impl<B, C: Clock, T: SessionTable> fmt::Debug for AffinityBody<B, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityBody")
            .field("local", &self.is_local())
            .finish_non_exhaustive()
    }
}
