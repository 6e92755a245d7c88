//! The values the parser hands out: [`Event`] and its [`ByteStr`] fields.

use std::fmt;

use bytes::Bytes;

/// An immutable UTF-8 string backed by [`Bytes`].
///
/// The SSE parser hands out fields as slices of what it holds (the chunks it was given, and its
/// copies of short pieces), so a field costs no further copy unless its data came in several
/// pieces, which are joined into one (see [`Parser`](super::Parser)'s *Cost*). A `ByteStr`
/// always holds valid UTF-8 (the parser replaced invalid input by U+FFFD when it decoded the
/// field).
///
/// [`as_str`](ByteStr::as_str) checks the UTF-8 again on each call (the crate has no `unsafe`
/// code); when you only need the bytes, for example to hand them to a JSON parser, use
/// [`as_bytes`](ByteStr::as_bytes) or [`as_ref`](ByteStr::as_ref), which are free.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// The empty string; does not allocate.
    pub const fn new() -> Self {
        ByteStr(Bytes::new())
    }

    /// A string from a `'static` literal; does not allocate.
    pub const fn from_static(s: &'static str) -> Self {
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps `bytes` if they are valid UTF-8, else hands them back.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Bytes> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(ByteStr(bytes)),
            Err(_) => Err(bytes),
        }
    }

    /// Wraps `bytes` that the caller has checked to be UTF-8 (the check runs again in debug
    /// builds; a mistake would make [`as_str`](ByteStr::as_str) panic, nothing worse).
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok(), "not UTF-8: {bytes:?}");
        ByteStr(bytes)
    }

    /// The string (checks the UTF-8 again; see the type's docs).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a ByteStr always holds valid UTF-8")
    }

    /// The UTF-8 bytes; free.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl AsRef<[u8]> for ByteStr {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<ByteStr> for Bytes {
    fn from(s: ByteStr) -> Bytes {
        s.0
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s))
    }
}

impl From<&'static str> for ByteStr {
    fn from(s: &'static str) -> Self {
        ByteStr::from_static(s)
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dispatched server-sent event.
///
/// Fields follow the WHATWG names: the event *type* (`message` unless an `event:` field set
/// another), the *data* (the `data:` lines joined by LF), and the *last event ID*, which is the
/// stream's last event ID at dispatch time (it persists across events, so an event without an
/// `id:` field reports the previous one).
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    pub(crate) event_type: ByteStr,
    pub(crate) data: ByteStr,
    pub(crate) last_event_id: ByteStr,
}

impl Event {
    /// Builds an event by hand (for tests and for embedders that synthesise events).
    pub fn new(
        event_type: impl Into<ByteStr>,
        data: impl Into<ByteStr>,
        last_event_id: impl Into<ByteStr>,
    ) -> Self {
        Event {
            event_type: event_type.into(),
            data: data.into(),
            last_event_id: last_event_id.into(),
        }
    }

    /// The event type: `message` unless the block carried a non-empty `event:` field.
    pub fn event_type(&self) -> &ByteStr {
        &self.event_type
    }

    /// The data: every `data:` value of the block, joined by LF (no trailing LF).
    pub fn data(&self) -> &ByteStr {
        &self.data
    }

    /// The stream's last event ID when this event was dispatched (empty if none was set).
    pub fn last_event_id(&self) -> &ByteStr {
        &self.last_event_id
    }

    /// Splits the event into (type, data, last event ID).
    pub fn into_parts(self) -> (ByteStr, ByteStr, ByteStr) {
        (self.event_type, self.data, self.last_event_id)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("event_type", &self.event_type)
            .field("data", &self.data)
            .field("last_event_id", &self.last_event_id)
            .finish()
    }
}
