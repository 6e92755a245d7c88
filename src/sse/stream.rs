//! A [`futures_core::Stream`] of events over a stream of body chunks.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use pin_project_lite::pin_project;

use super::{Event, Parser, Skipped};

/// What an [`EventStream`] yields instead of an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError<E> {
    /// The underlying stream failed; the adapter goes on polling it if you do.
    #[error("sse body error: {0}")]
    Body(#[source] E),
    /// An event exceeded the parser's limits and was skipped; the stream goes on.
    #[error(transparent)]
    Skipped(#[from] Skipped),
}

pin_project! {
    /// Turns a stream of `Result<Bytes, E>` chunks into a stream of server-sent [`Event`]s
    /// (owned and decoded: see [`EventRef::to_event`](super::EventRef::to_event)).
    ///
    /// The inner stream is polled only when this stream is polled and no parsed event is
    /// waiting, so backpressure reaches the producer. When the inner stream ends, an unfinished
    /// event is discarded (see [`Parser::finish`]) and this stream ends.
    ///
    /// ```
    /// # futures_executor::block_on(async {
    /// use bytes::Bytes;
    /// use futures_util::{StreamExt, stream};
    /// use mcp_affinity::sse::EventStream;
    ///
    /// let chunks = stream::iter([
    ///     Ok::<_, std::io::Error>(Bytes::from_static(b"data: hel")),
    ///     Ok(Bytes::from_static(b"lo\n\n")),
    /// ]);
    /// let mut events = EventStream::new(chunks);
    /// let event = events.next().await.unwrap().unwrap();
    /// assert_eq!(event.data(), "hello");
    /// assert!(events.next().await.is_none());
    /// # });
    /// ```
    #[derive(Debug)]
    #[must_use = "streams do nothing unless polled"]
    pub struct EventStream<S> {
        #[pin]
        inner: S,
        parser: Parser,
        done: bool,
    }
}

impl<S> EventStream<S> {
    /// Wraps `inner` with a parser using the default limits.
    pub fn new(inner: S) -> Self {
        EventStream::with_parser(inner, Parser::new())
    }

    /// Wraps `inner` with the given parser (for custom limits, or to resume a stream).
    pub fn with_parser(inner: S, parser: Parser) -> Self {
        EventStream {
            inner,
            parser,
            done: false,
        }
    }

    /// The parser, for [`Parser::last_event_id`] and [`Parser::reconnection_time`].
    pub fn parser(&self) -> &Parser {
        &self.parser
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner stream and the parser.
    pub fn into_parts(self) -> (S, Parser) {
        (self.inner, self.parser)
    }
}

impl<S, E> Stream for EventStream<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Event, StreamError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(item) = this.parser.next_event() {
                let item = item.map(|event| event.to_event());
                return Poll::Ready(Some(item.map_err(StreamError::Skipped)));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => this.parser.push(chunk),
                Some(Err(err)) => return Poll::Ready(Some(Err(StreamError::Body(err)))),
                None => {
                    this.parser.finish();
                    *this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}
