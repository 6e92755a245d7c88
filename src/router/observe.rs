//! Observers of response bodies: they read a proxied body, chunk by chunk, until the key it
//! reveals is found or a bound is hit, without holding the stream back.

use bytes::{Bytes, BytesMut};

use super::classify::sse_session_param;
use super::exchange::IdBuf;
use crate::sse;

/// What an observer concluded from the bytes so far.
#[derive(Debug)]
pub(crate) enum Seen {
    /// Nothing yet: feed more.
    More,
    /// The key the body reveals (a task's id).
    #[cfg_attr(not(feature = "tasks"), allow(dead_code))]
    Key(IdBuf),
    /// A legacy SSE `endpoint` event: its URL (the event's data), where the session id is in
    /// it as sent, and the id as the backend reads it (decoded).
    Endpoint {
        url: Box<[u8]>,
        raw: std::ops::Range<usize>,
        id: IdBuf,
        /// How many of the bytes fed so far come after the event's end (the rest of its
        /// chunk, and of those queued behind it).
        after: usize,
    },
    /// The body reveals no key: stop observing.
    Nothing,
    /// The byte bound was hit first: stop observing.
    Limit,
}

/// Reads one response body for the key it reveals.
#[derive(Debug)]
pub(crate) enum Observer {
    /// A legacy SSE stream: its `endpoint` event carries the session in its URL. With sealed
    /// ids the bytes are held until that event (`held`), to be sent rewritten.
    Endpoint {
        events: sse::Parser,
        seen: usize,
        held: Option<BytesMut>,
    },
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
    pub(crate) fn endpoint(max: usize, hold: bool) -> Self {
        Observer::Endpoint {
            events: parser(max),
            seen: 0,
            held: hold.then(BytesMut::new),
        }
    }

    /// The bytes held back so far (a rewriting endpoint observer), taken.
    pub(crate) fn take_held(&mut self) -> Option<BytesMut> {
        match self {
            Observer::Endpoint { held, .. } => held.take(),
            #[cfg(feature = "tasks")]
            _ => None,
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
            Observer::Endpoint { events, seen, held } => {
                if let Some(held) = held {
                    held.extend_from_slice(chunk);
                }
                match read_events(events, seen, chunk, max, b"endpoint", |data| {
                    Some(endpoint_session(data))
                }) {
                    Seen::Endpoint { url, raw, id, .. } => Seen::Endpoint {
                        url,
                        raw,
                        id,
                        after: events.unread_len(),
                    },
                    seen => seen,
                }
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

/// The session id in an `endpoint` event's URL (relative or absolute), and where it is.
fn endpoint_session(data: &[u8]) -> Seen {
    let Ok(url) = std::str::from_utf8(data) else {
        return Seen::Nothing;
    };
    let url = url.trim();
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let Some((_, query)) = url.split_once('?') else {
        return Seen::Nothing;
    };
    match sse_session_param(query) {
        Ok(Some(param)) => {
            // `query` borrows from `data`: the raw value's offset there.
            let at = query.as_ptr() as usize - data.as_ptr() as usize;
            Seen::Endpoint {
                url: data.into(),
                raw: at + param.raw.start..at + param.raw.end,
                id: IdBuf::new(&param.value),
                after: 0,
            }
        }
        _ => Seen::Nothing,
    }
}

/// Recognising a `CreateTaskResult` in a JSON-RPC message, with `serde_json`.
///
/// Only a JSON-RPC 2.0 response counts: an object with `"jsonrpc": "2.0"`, an `id` that is a
/// string or a number, no `method`, and exactly one of `result` and `error`. A task is a
/// `result` object with `"resultType": "task"` and a string `taskId`. Anything else (arrays
/// read as objects, a request that also carries a result, repeated members) is not taken
/// for a response at all: serde's derived impls accept more shapes than the schema does, so
/// the message is read by hand.
#[cfg(feature = "tasks")]
mod task {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

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

    /// The members of a message that matter, each read at most once.
    #[derive(Default)]
    struct Envelope<'a> {
        version_ok: bool,
        id_ok: bool,
        method: bool,
        result: Option<Outcome<'a>>,
        error: bool,
    }

    /// A `result` member: a task's id, or any other result.
    enum Outcome<'a> {
        Task(Cow<'a, str>),
        Other,
    }

    /// Fails on a member seen twice.
    fn once<E: de::Error>(seen: &mut bool, name: &'static str) -> Result<(), E> {
        if std::mem::replace(seen, true) {
            return Err(E::duplicate_field(name));
        }
        Ok(())
    }

    impl<'de> Deserialize<'de> for Envelope<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Members;
            impl<'de> Visitor<'de> for Members {
                type Value = Envelope<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON-RPC message object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = Envelope::default();
                    let (mut version, mut id, mut result) = (false, false, false);
                    while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                        match &*name {
                            "jsonrpc" => {
                                once(&mut version, "jsonrpc")?;
                                out.version_ok = map.next_value::<Cow<'de, str>>()? == "2.0";
                            }
                            "id" => {
                                once(&mut id, "id")?;
                                out.id_ok = map.next_value::<Id>()?.0;
                            }
                            "method" => {
                                once(&mut out.method, "method")?;
                                map.next_value::<IgnoredAny>()?;
                            }
                            "result" => {
                                once(&mut result, "result")?;
                                out.result = Some(map.next_value::<Outcome<'de>>()?);
                            }
                            "error" => {
                                once(&mut out.error, "error")?;
                                map.next_value::<IgnoredAny>()?;
                            }
                            _ => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(out)
                }
            }
            d.deserialize_map(Members)
        }
    }

    /// Whether an `id` is a string or a number.
    struct Id(bool);

    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Kind;
            impl<'de> Visitor<'de> for Kind {
                type Value = Id;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON-RPC id")
                }
                fn visit_str<E>(self, _: &str) -> Result<Id, E> {
                    Ok(Id(true))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Id, E> {
                    Ok(Id(true))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Id, E> {
                    Ok(Id(true))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Id, E> {
                    Ok(Id(true))
                }
                fn visit_unit<E>(self) -> Result<Id, E> {
                    Ok(Id(false))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Id, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Id(false))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Id, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Id(false))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Id, E> {
                    Ok(Id(false))
                }
            }
            d.deserialize_any(Kind)
        }
    }

    impl<'de> Deserialize<'de> for Outcome<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Result_;
            impl<'de> Visitor<'de> for Result_ {
                type Value = Outcome<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON-RPC result")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Outcome<'de>, A::Error> {
                    let (mut kind, mut id): (Option<Cow<'de, str>>, Option<Cow<'de, str>>) =
                        (None, None);
                    let (mut seen_kind, mut seen_id) = (false, false);
                    while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                        match &*name {
                            "resultType" => {
                                once(&mut seen_kind, "resultType")?;
                                kind = map.next_value::<Text<'de>>()?.0;
                            }
                            "taskId" => {
                                once(&mut seen_id, "taskId")?;
                                id = map.next_value::<Text<'de>>()?.0;
                            }
                            _ => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(match (kind, id) {
                        (Some(kind), Some(id)) if kind == "task" => Outcome::Task(id),
                        _ => Outcome::Other,
                    })
                }
                fn visit_seq<A: de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Outcome<'de>, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Outcome::Other)
                }
                fn visit_str<E>(self, _: &str) -> Result<Outcome<'de>, E> {
                    Ok(Outcome::Other)
                }
                fn visit_i64<E>(self, _: i64) -> Result<Outcome<'de>, E> {
                    Ok(Outcome::Other)
                }
                fn visit_u64<E>(self, _: u64) -> Result<Outcome<'de>, E> {
                    Ok(Outcome::Other)
                }
                fn visit_f64<E>(self, _: f64) -> Result<Outcome<'de>, E> {
                    Ok(Outcome::Other)
                }
                fn visit_bool<E>(self, _: bool) -> Result<Outcome<'de>, E> {
                    Ok(Outcome::Other)
                }
                fn visit_unit<E>(self) -> Result<Outcome<'de>, E> {
                    Ok(Outcome::Other)
                }
            }
            d.deserialize_any(Result_)
        }
    }

    /// A string member, or `None` for any other value.
    struct Text<'a>(Option<Cow<'a, str>>);

    impl<'de> Deserialize<'de> for Text<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Kind;
            impl<'de> Visitor<'de> for Kind {
                type Value = Text<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                    Ok(Text(Some(Cow::Borrowed(s))))
                }
                fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                    Ok(Text(Some(Cow::Owned(s.to_owned()))))
                }
                fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                    Ok(Text(Some(Cow::Owned(s))))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Text(None))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Text<'de>, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Text(None))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Text<'de>, E> {
                    Ok(Text(None))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Text<'de>, E> {
                    Ok(Text(None))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Text<'de>, E> {
                    Ok(Text(None))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Text<'de>, E> {
                    Ok(Text(None))
                }
                fn visit_unit<E>(self) -> Result<Text<'de>, E> {
                    Ok(Text(None))
                }
            }
            d.deserialize_any(Kind)
        }
    }

    fn of(envelope: Envelope<'_>) -> Message {
        let response = envelope.version_ok && envelope.id_ok && !envelope.method;
        match (response, envelope.result, envelope.error) {
            (true, Some(Outcome::Task(id)), false) => Message::Task(IdBuf::new(id.as_bytes())),
            (true, Some(Outcome::Other), false) | (true, None, true) => Message::Response,
            _ => Message::Other,
        }
    }

    /// A complete message (an SSE event's data).
    pub(super) fn classify(data: &[u8]) -> Message {
        serde_json::from_slice::<Envelope<'_>>(data).map_or(Message::Other, of)
    }

    /// A complete JSON body; `None` if it is not a JSON object.
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
            Seen::Endpoint { id, .. } => Some(String::from_utf8(id.as_bytes().to_vec()).unwrap()),
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
    fn only_a_jsonrpc_response_with_a_task_result_object_creates_a_task() {
        use task::Message;
        let is_task = |json: &str| matches!(task::classify(json.as_bytes()), Message::Task(_));
        // The schema's shape, with members in any order and an escaped id.
        assert!(is_task(
            r#"{"result":{"taskId":"t\u0031","resultType":"task"},"id":"a","jsonrpc":"2.0"}"#
        ));
        for (json, why) in [
            (
                r#"[["2.0",1,{"resultType":"task","taskId":"x"}]]"#,
                "an array read as a struct",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":[["task","x"]]}"#,
                "a result array read as a struct",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","result":{"resultType":"task","taskId":"x"}}"#,
                "a request carrying a result",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"x"},"error":{}}"#,
                "a result and an error",
            ),
            (
                r#"{"id":1,"result":{"resultType":"task","taskId":"x"}}"#,
                "no jsonrpc member",
            ),
            (
                r#"{"jsonrpc":"1.0","id":1,"result":{"resultType":"task","taskId":"x"}}"#,
                "another version",
            ),
            (
                r#"{"jsonrpc":"2.0","result":{"resultType":"task","taskId":"x"}}"#,
                "no id",
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"result":{"resultType":"task","taskId":"x"}}"#,
                "a null id",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":7}}"#,
                "a number for taskId",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"x","taskId":"y"}}"#,
                "two task ids",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"id":2,"result":{"resultType":"task","taskId":"x"}}"#,
                "two ids",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","taskId":"x"}}"#,
                "not a task",
            ),
        ] {
            assert!(!is_task(json), "{why}: {json}");
        }
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
