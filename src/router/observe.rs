//! Observers of response bodies: they read a proxied body, chunk by chunk, until the key it
//! reveals is found or a bound is hit, without holding the stream back.

use bytes::Bytes;
#[cfg(feature = "tasks")]
use bytes::BytesMut;

use super::classify::sse_session_param;
use super::exchange::IdBuf;
use crate::sse;

/// What an observer concluded from the bytes so far.
#[derive(Debug)]
pub(crate) enum Seen {
    /// Nothing yet: feed more.
    More,
    /// The key the body reveals.
    Key(IdBuf),
    /// The body reveals no key: stop observing.
    Nothing,
    /// The byte bound was hit first: stop observing.
    Limit,
}

/// Reads one response body for the key it reveals.
#[derive(Debug)]
pub(crate) enum Observer {
    /// A legacy SSE stream: its `endpoint` event carries the session in its URL.
    Endpoint { events: sse::Parser, seen: usize },
    /// A 2026-07-28 call answered with an SSE stream: a `message` event may hold a
    /// `CreateTaskResult`.
    #[cfg(feature = "tasks")]
    TaskEvents { events: sse::Parser, seen: usize },
    /// A 2026-07-28 call answered with JSON, gathered up to the bound and parsed once its
    /// top-level value is complete.
    #[cfg(feature = "tasks")]
    TaskJson { body: BytesMut, framing: Framing },
}

fn parser(max: usize) -> sse::Parser {
    sse::Parser::with_limits(
        sse::Limits::new()
            .with_max_line_len(max)
            .with_max_event_len(max),
    )
}

impl Observer {
    pub(crate) fn endpoint(max: usize) -> Self {
        Observer::Endpoint {
            events: parser(max),
            seen: 0,
        }
    }

    #[cfg(feature = "tasks")]
    pub(crate) fn task_events(max: usize) -> Self {
        Observer::TaskEvents {
            events: parser(max),
            seen: 0,
        }
    }

    #[cfg(feature = "tasks")]
    pub(crate) fn task_json(expected: Option<usize>, max: usize) -> Self {
        Observer::TaskJson {
            body: BytesMut::with_capacity(expected.unwrap_or(1024).min(max)),
            framing: Framing::default(),
        }
    }

    /// Feeds the next chunk of the body; `max` bounds the bytes observed.
    pub(crate) fn feed(&mut self, chunk: &Bytes, max: usize) -> Seen {
        match self {
            Observer::Endpoint { events, seen } => {
                read_events(events, seen, chunk, max, b"endpoint", |data| {
                    Some(endpoint_session(data))
                })
            }
            #[cfg(feature = "tasks")]
            Observer::TaskEvents { events, seen } => read_events(
                events,
                seen,
                chunk,
                max,
                b"message",
                |data| match task::classify(data) {
                    task::Message::Task(id) => Some(Seen::Key(id)),
                    task::Message::Response => Some(Seen::Nothing),
                    task::Message::Other => None,
                },
            ),
            #[cfg(feature = "tasks")]
            Observer::TaskJson { body, framing } => {
                if body.len() + chunk.len() > max {
                    return Seen::Limit;
                }
                body.extend_from_slice(chunk);
                // Each byte is scanned once for the end of the value; it is parsed once.
                let Some(end) = framing.scan(chunk) else {
                    return Seen::More;
                };
                let value = &body[..body.len() - chunk.len() + end];
                match task::classify_json(value) {
                    Some(task::Message::Task(id)) => Seen::Key(id),
                    _ => Seen::Nothing,
                }
            }
        }
    }
}

/// Feeds `chunk` to an observed event stream and shows the data of each event of type `kind`
/// to `judge`, until it concludes; past `max` bytes seen, gives up.
fn read_events(
    events: &mut sse::Parser,
    seen: &mut usize,
    chunk: &Bytes,
    max: usize,
    kind: &[u8],
    mut judge: impl FnMut(&[u8]) -> Option<Seen>,
) -> Seen {
    *seen += chunk.len();
    events.push(chunk.clone());
    while let Some(event) = events.next_event() {
        let Ok(event) = event else { continue };
        if event.event_type() == kind {
            if let Some(conclusion) = judge(&event.data()) {
                return conclusion;
            }
        }
    }
    if *seen > max { Seen::Limit } else { Seen::More }
}

/// Finds where a JSON document's top-level object or array ends, a chunk at a time, so that
/// it is parsed once instead of on every chunk (which would be quadratic in the chunks).
#[cfg(feature = "tasks")]
#[derive(Debug, Default)]
pub(crate) struct Framing {
    depth: u32,
    in_string: bool,
    escaped: bool,
}

#[cfg(feature = "tasks")]
impl Framing {
    /// Reads the next chunk; the offset just past the end of the top-level value, if it ends
    /// in this chunk.
    fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        for (i, &b) in chunk.iter().enumerate() {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// The session id in an `endpoint` event's URL (relative or absolute).
fn endpoint_session(url: &[u8]) -> Seen {
    let Ok(url) = std::str::from_utf8(url) else {
        return Seen::Nothing;
    };
    let url = url.trim();
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    match url
        .split_once('?')
        .map(|(_, query)| sse_session_param(query))
    {
        Some(Ok(Some(id))) => Seen::Key(IdBuf::new(id.as_bytes())),
        _ => Seen::Nothing,
    }
}

/// Recognising a `CreateTaskResult` in a JSON-RPC message, with `serde_json`.
#[cfg(feature = "tasks")]
mod task {
    use std::borrow::Cow;

    use serde::Deserialize;
    use serde::de::IgnoredAny;

    use super::IdBuf;

    /// What a JSON-RPC message is, as far as tasks go.
    pub(super) enum Message {
        /// A response whose result creates a task: its id.
        Task(IdBuf),
        /// Another response (a plain result, or an error): the call is answered.
        Response,
        /// A request or notification, or not JSON-RPC at all.
        Other,
    }

    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(default, borrow)]
        result: Option<TaskResult<'a>>,
        #[serde(default)]
        error: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    struct TaskResult<'a> {
        #[serde(rename = "resultType", default, borrow)]
        result_type: Option<Cow<'a, str>>,
        #[serde(rename = "taskId", default, borrow)]
        task_id: Option<Cow<'a, str>>,
    }

    fn of(envelope: Envelope<'_>) -> Message {
        match envelope.result {
            Some(TaskResult {
                result_type: Some(kind),
                task_id: Some(id),
            }) if kind == "task" => Message::Task(IdBuf::new(id.as_bytes())),
            Some(_) => Message::Response,
            None if envelope.error.is_some() => Message::Response,
            None => Message::Other,
        }
    }

    /// A complete message (an SSE event's data).
    pub(super) fn classify(data: &[u8]) -> Message {
        serde_json::from_slice::<Envelope<'_>>(data).map_or(Message::Other, of)
    }

    /// A complete JSON body; `None` if it is not a JSON-RPC message.
    pub(super) fn classify_json(body: &[u8]) -> Option<Message> {
        serde_json::from_slice::<Envelope<'_>>(body).ok().map(of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(seen: Seen) -> Option<String> {
        match seen {
            Seen::Key(id) => Some(String::from_utf8(id.as_bytes().to_vec()).unwrap()),
            _ => None,
        }
    }

    #[test]
    fn endpoint_urls_of_every_sdk_yield_their_session() {
        for (url, id) in [
            (
                "/messages/?session_id=fd15ff9f769d4acd9a944aa18b923c61",
                "fd15ff9f769d4acd9a944aa18b923c61",
            ),
            (
                "/messages?sessionId=80f95dd5-32bf-446a-a8e1-8933ba08ae27",
                "80f95dd5-32bf-446a-a8e1-8933ba08ae27",
            ),
            ("http://127.0.0.1:9001/sse?sessionid=01HZX3", "01HZX3"),
            (" /m?x=1&sessionId=a#frag ", "a"),
        ] {
            assert_eq!(
                found(endpoint_session(url.as_bytes())).as_deref(),
                Some(id),
                "{url}"
            );
        }
        assert!(matches!(endpoint_session(b"/messages/"), Seen::Nothing));
    }

    #[cfg(feature = "tasks")]
    #[test]
    fn create_task_results_are_told_from_other_messages() {
        use task::Message;
        let task = br#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"task","taskId":"p1-25db","status":"working","ttlMs":60000}}"#;
        assert!(matches!(task::classify(task), Message::Task(id) if id.as_bytes() == b"p1-25db"));
        let plain = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"resultType":"complete"}}"#;
        assert!(matches!(task::classify(plain), Message::Response));
        let error = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#;
        assert!(matches!(task::classify(error), Message::Response));
        let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert!(matches!(task::classify(note), Message::Other));
        assert!(task::classify_json(b"not json").is_none());
    }

    #[cfg(feature = "tasks")]
    #[test]
    fn json_framing_finds_the_end_of_the_value_across_chunks_and_strings() {
        let body = br#"{"a":"x}\"]{","b":[1,{"c":2}]}  "#;
        let mut whole = Framing::default();
        assert_eq!(whole.scan(body), Some(body.len() - 2));
        // Byte by byte: the end is found at the same place, strings with brackets and
        // escaped quotes included.
        let mut bytes = Framing::default();
        let end = (0..body.len()).find_map(|i| bytes.scan(&body[i..=i]).map(|_| i + 1));
        assert_eq!(end, Some(body.len() - 2));
    }
}
