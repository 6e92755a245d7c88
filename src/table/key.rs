//! Affinity keys: tenant + kind + id.

use std::fmt;

use crate::TenantId;

/// What an affinity key identifies. Keys of different kinds never match, even with equal ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyKind {
    /// A legacy HTTP+SSE (2024-11-05) session: the `sessionId` / `session_id` / `sessionid`
    /// query parameter of the endpoint URL.
    SseSession,
    /// A Streamable HTTP (2025-03-26 to 2025-11-25) session: the `Mcp-Session-Id` header.
    Session,
    /// A task of the 2026-07-28 era: its `taskId`, carried in `Mcp-Name` by `tasks/*` calls.
    Task,
    /// A key chosen by the operator's own extractor (an `Mcp-Param-*` header, a principal, …).
    Operator,
}

impl KeyKind {
    /// Every kind, in a fixed order.
    pub const ALL: &'static [KeyKind] = &[
        KeyKind::SseSession,
        KeyKind::Session,
        KeyKind::Task,
        KeyKind::Operator,
    ];

    /// A stable small number for storage.
    pub const fn to_u8(self) -> u8 {
        match self {
            KeyKind::SseSession => 1,
            KeyKind::Session => 2,
            KeyKind::Task => 3,
            KeyKind::Operator => 4,
        }
    }

    /// The kind stored as [`to_u8`](KeyKind::to_u8).
    pub const fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            1 => KeyKind::SseSession,
            2 => KeyKind::Session,
            3 => KeyKind::Task,
            4 => KeyKind::Operator,
            _ => return None,
        })
    }

    /// A short lowercase name (`sse-session`, `session`, `task`, `operator`).
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::SseSession => "sse-session",
            KeyKind::Session => "session",
            KeyKind::Task => "task",
            KeyKind::Operator => "operator",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an id cannot be an affinity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The id is empty.
    #[error("empty affinity key")]
    Empty,
    /// The id is longer than the bound.
    #[error("affinity key of {len} bytes is longer than {max}")]
    TooLong {
        /// The id's length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The id has a byte outside visible ASCII (0x21 to 0x7E).
    #[error("affinity key byte {byte:#04x} at {index} is not visible ascii")]
    InvalidByte {
        /// Where the first such byte is.
        index: usize,
        /// The byte.
        byte: u8,
    },
}

/// Whether every byte is visible ASCII (0x21 to 0x7E), eight bytes at a time.
#[inline]
fn is_visible_ascii(id: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x21 or above 0x7E sets its high bit (the classic "has less than" and "has
    // more than" tricks, exact for bounds under 0x80 in telling whether any byte is out).
    let outside = |w: u64| (w.wrapping_sub(ONES * 0x21) & !w) | (w.wrapping_add(ONES) | w);
    let word = |at: usize| u64::from_le_bytes(id[at..at + 8].try_into().expect("8 bytes"));
    if id.len() < 8 {
        return id.iter().all(|b| (0x21..=0x7E).contains(b));
    }
    let mut bad = 0;
    let mut at = 0;
    while at + 8 <= id.len() {
        bad |= outside(word(at));
        at += 8;
    }
    // The last, overlapping word covers the tail.
    bad |= outside(word(id.len() - 8));
    bad & HIGHS == 0
}

/// A validated affinity key, borrowing its id: tenant + kind + id.
///
/// The id is 1 to `max_len` bytes of visible ASCII (0x21 to 0x7E), the alphabet the MCP
/// specification allows for `Mcp-Session-Id`; [`Key::DEFAULT_MAX_LEN`] is 256 bytes. Build keys
/// on the hot path with [`Key::new`]: it borrows, so a lookup allocates nothing.
///
/// ```
/// use mcp_affinity::TenantId;
/// use mcp_affinity::table::{InvalidKey, Key, KeyKind};
///
/// let key = Key::new(TenantId::DEFAULT, KeyKind::Session, b"4f2a9c1e").unwrap();
/// assert_eq!(key.id(), "4f2a9c1e");
/// assert_eq!(
///     Key::new(TenantId::DEFAULT, KeyKind::Session, b"a b"),
///     Err(InvalidKey::InvalidByte { index: 1, byte: b' ' })
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key<'a> {
    tenant: TenantId,
    kind: KeyKind,
    /// Visible ASCII, checked at construction.
    id: &'a [u8],
}

impl<'a> Key<'a> {
    /// The default bound on an id's length: 256 bytes.
    pub const DEFAULT_MAX_LEN: usize = 256;

    /// Validates `id` (at most [`DEFAULT_MAX_LEN`](Key::DEFAULT_MAX_LEN) bytes) as a key.
    #[inline]
    pub fn new(tenant: TenantId, kind: KeyKind, id: &'a [u8]) -> Result<Self, InvalidKey> {
        Key::with_max_len(tenant, kind, id, Key::DEFAULT_MAX_LEN)
    }

    /// Validates `id`, at most `max_len` bytes, as a key.
    #[inline]
    pub fn with_max_len(
        tenant: TenantId,
        kind: KeyKind,
        id: &'a [u8],
        max_len: usize,
    ) -> Result<Self, InvalidKey> {
        if id.is_empty() {
            return Err(InvalidKey::Empty);
        }
        if id.len() > max_len {
            return Err(InvalidKey::TooLong {
                len: id.len(),
                max: max_len,
            });
        }
        if !is_visible_ascii(id) {
            let index = id
                .iter()
                .position(|&b| !(0x21..=0x7E).contains(&b))
                .expect("an invisible byte exists");
            return Err(InvalidKey::InvalidByte {
                index,
                byte: id[index],
            });
        }
        Ok(Key { tenant, kind, id })
    }

    /// A key of an id validated before (one the router holds): not checked again.
    pub(crate) fn revalidated_in_debug(tenant: TenantId, kind: KeyKind, id: &'a [u8]) -> Self {
        debug_assert!(Key::with_max_len(tenant, kind, id, usize::MAX).is_ok());
        Key { tenant, kind, id }
    }

    /// The tenant.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The id (visible ASCII).
    pub fn id(&self) -> &'a str {
        std::str::from_utf8(self.id).expect("visible ASCII is UTF-8")
    }

    /// The id's bytes (visible ASCII).
    pub fn id_bytes(&self) -> &'a [u8] {
        self.id
    }

    /// An owned copy.
    pub fn to_owned(&self) -> OwnedKey {
        OwnedKey {
            tenant: self.tenant,
            kind: self.kind,
            id: self.id().into(),
        }
    }
}

impl fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Key({}/{}/{:?})",
            self.tenant.get(),
            self.kind,
            self.id()
        )
    }
}

/// An owned affinity key, as listed by [`SessionTable::keys_of`](super::SessionTable::keys_of).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnedKey {
    tenant: TenantId,
    kind: KeyKind,
    id: Box<str>,
}

impl OwnedKey {
    /// Validates and copies `id` (at most [`Key::DEFAULT_MAX_LEN`] bytes) as a key.
    pub fn new(tenant: TenantId, kind: KeyKind, id: &[u8]) -> Result<Self, InvalidKey> {
        Key::new(tenant, kind, id).map(|key| key.to_owned())
    }

    /// The borrowed form.
    pub fn as_key(&self) -> Key<'_> {
        Key {
            tenant: self.tenant,
            kind: self.kind,
            id: self.id.as_bytes(),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The id (visible ASCII).
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for OwnedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.as_key(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_bounds_are_exact() {
        let t = TenantId::DEFAULT;
        assert!(Key::new(t, KeyKind::Session, b"!~").is_ok());
        for bad in [0x20u8, 0x7F, 0x00, 0x80, 0xFF] {
            assert_eq!(
                Key::new(t, KeyKind::Session, &[b'a', bad]),
                Err(InvalidKey::InvalidByte {
                    index: 1,
                    byte: bad
                })
            );
        }
    }

    #[test]
    fn every_byte_value_is_judged_in_every_word_position() {
        for byte in 0..=u8::MAX {
            for at in 0..17 {
                let mut id = [b'a'; 17];
                id[at] = byte;
                let expected = (0x21..=0x7E).contains(&byte);
                assert_eq!(is_visible_ascii(&id), expected, "byte {byte:#04x} at {at}");
            }
        }
    }

    #[test]
    fn length_bounds_are_exact() {
        let t = TenantId::DEFAULT;
        assert_eq!(Key::new(t, KeyKind::Task, b""), Err(InvalidKey::Empty));
        let long = [b'x'; 257];
        assert!(Key::new(t, KeyKind::Task, &long[..256]).is_ok());
        assert_eq!(
            Key::new(t, KeyKind::Task, &long),
            Err(InvalidKey::TooLong { len: 257, max: 256 })
        );
        assert!(Key::with_max_len(t, KeyKind::Task, &long, 257).is_ok());
    }

    #[test]
    fn kinds_round_trip_through_u8() {
        for &kind in KeyKind::ALL {
            assert_eq!(KeyKind::from_u8(kind.to_u8()), Some(kind));
        }
        assert_eq!(KeyKind::from_u8(0), None);
    }
}
