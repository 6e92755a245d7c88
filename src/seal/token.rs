//! Sealing and opening tokens.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm_siv::Nonce;
use aes_gcm_siv::aead::AeadInOut;
use aes_gcm_siv::aead::inout::InOutBuf;

use super::claims::FIXED_LEN;
use super::key::HINT_BITS;
use super::{Binding, Claims, Keyring, MAX_ID, MAX_TOKEN_LEN, MIN_TOKEN_LEN, VERSION, base64};

/// The nonce's length.
const NONCE_LEN: usize = 12;
/// The tag's length.
const TAG_LEN: usize = 16;
/// Where the ciphertext starts: after the header byte and the nonce.
const CIPHERTEXT_AT: usize = 1 + NONCE_LEN;
/// The longest plaintext: the fixed part and a raw id of [`MAX_ID`] bytes.
const MAX_PLAINTEXT: usize = FIXED_LEN + MAX_ID;
/// The longest decoded token.
pub(crate) const MAX_RAW: usize = CIPHERTEXT_AT + MAX_PLAINTEXT + TAG_LEN;
/// The shortest decoded token: a 1-byte id.
pub(crate) const MIN_RAW: usize = CIPHERTEXT_AT + FIXED_LEN + 1 + TAG_LEN;

/// The nonce sequence of one router: 4 bytes from a seed, then a 64-bit counter that starts at
/// a value taken from the seed and grows by one per token.
///
/// Seed it with 12 random bytes from the embedder (`getrandom`, the OS) when the router
/// starts; keep one `Nonces` for the router's life and across keyring swaps. It is shared by
/// reference (`&self`, lock-free) between threads.
///
/// Why this is enough: AES-256-GCM-SIV is nonce-misuse resistant (RFC 8452). Should two
/// routers (or one restarted with the same seed) ever use the same nonce under the same key,
/// the only thing revealed is whether the two plaintexts are identical, and plaintexts differ
/// by id and time. Nothing about the key or the plaintexts leaks and forgery stays
/// impossible, which is why a counter (not a fresh random nonce per token) is safe here. With
/// random seeds, two routers share a prefix one time in 2^32, and even then their counters
/// start at independent random points of a 2^64 cycle.
pub struct Nonces {
    prefix: [u8; 4],
    counter: AtomicU64,
}

impl Nonces {
    /// A sequence seeded with `seed`: bytes 0..4 are the prefix, bytes 4..12 (little-endian)
    /// the counter's first value.
    pub fn new(seed: [u8; 12]) -> Nonces {
        let (prefix, start) = seed.split_at(4);
        Nonces {
            prefix: prefix.try_into().expect("4 bytes"),
            counter: AtomicU64::new(u64::from_le_bytes(start.try_into().expect("8 bytes"))),
        }
    }

    fn next(&self) -> Nonce {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = Nonce::default();
        nonce[..4].copy_from_slice(&self.prefix);
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        nonce
    }
}

impl fmt::Debug for Nonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nonces")
            .field("prefix", &format_args!("{:02x?}", self.prefix))
            .finish_non_exhaustive()
    }
}

/// A sealed token: base64url text without padding, at most [`MAX_TOKEN_LEN`] characters.
///
/// Kept inline (no allocation). Its characters (`A–Z a–z 0–9 - _`) are valid in an HTTP
/// header value and in a URL query value without escaping.
#[derive(Clone)]
pub struct SealedToken {
    text: [u8; MAX_TOKEN_LEN],
    len: u16,
}

impl SealedToken {
    /// The token.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("base64url is ASCII")
    }

    /// The token's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }
}

impl PartialEq for SealedToken {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SealedToken {}

impl AsRef<str> for SealedToken {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for SealedToken {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Display for SealedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedToken({:?})", self.as_str())
    }
}

/// Why a token did not open: for metrics only.
///
/// Answer all of them the same way, exactly like an unknown session: telling a client which
/// check failed would help it probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Not a token of this format: not base64url, another version, too short or too long
    /// (or, after authentication, a plaintext this codec never writes).
    #[error("malformed sealed token")]
    Malformed,
    /// No key of the ring has the token's hint: sealed under a key retired or never held.
    #[error("sealed token names no key of the keyring")]
    UnknownKey,
    /// Authentication failed: forged, altered, spliced or truncated, sealed under another key
    /// with the same hint, or presented under another binding (tenant, principal, kind).
    #[error("sealed token failed authentication")]
    Rejected,
}

impl Keyring {
    /// Seals `claims` under `binding` with the first key, taking the next nonce of `nonces`.
    ///
    /// Allocates nothing. The token is [`MAX_TOKEN_LEN`] characters at most; see the module
    /// docs for the lengths of common ids.
    pub fn seal(&self, nonces: &Nonces, claims: &Claims, binding: &Binding) -> SealedToken {
        let key = self.sealing_key();
        let nonce = nonces.next();
        let mut raw = [0u8; MAX_RAW];
        raw[0] = key.header();
        raw[1..CIPHERTEXT_AT].copy_from_slice(&nonce);
        let plain_len = claims.write_plaintext(&mut raw[CIPHERTEXT_AT..]);
        let tag_at = CIPHERTEXT_AT + plain_len;
        let tag = key
            .cipher()
            .encrypt_inout_detached(
                &nonce,
                &binding.associated_data(),
                (&mut raw[CIPHERTEXT_AT..tag_at]).into(),
            )
            .expect("the plaintext is within the limits");
        let end = tag_at + TAG_LEN;
        raw[tag_at..end].copy_from_slice(&tag);
        let mut token = SealedToken {
            text: [0; MAX_TOKEN_LEN],
            len: 0,
        };
        token.len = base64::encode(&raw[..end], &mut token.text) as u16;
        token
    }

    /// Opens `token` (the text a client presented) under `binding`: the claims it carries, if
    /// one of the ring's keys sealed it under this very binding.
    ///
    /// Allocates nothing: the token is decoded into a stack buffer and decrypted into another,
    /// and the claims carry the id inline. A token longer than [`MAX_TOKEN_LEN`] or shorter
    /// than [`MIN_TOKEN_LEN`] is refused before any work. Keys that share the token's hint
    /// are tried in ring order.
    ///
    /// # Errors
    ///
    /// [`OpenError`], to count; answer each like an unknown session.
    pub fn open(&self, token: &[u8], binding: &Binding) -> Result<Claims, OpenError> {
        if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
            return Err(OpenError::Malformed);
        }
        let mut raw = [0u8; MAX_RAW];
        let len = base64::decode(token, &mut raw).map_err(|_| OpenError::Malformed)?;
        let raw = &raw[..len];
        if raw[0] >> HINT_BITS != VERSION {
            return Err(OpenError::Malformed);
        }
        let hint = raw[0] & ((1 << HINT_BITS) - 1);
        let nonce = Nonce::try_from(&raw[1..CIPHERTEXT_AT]).expect("12 bytes");
        let (ciphertext, tag) = raw[CIPHERTEXT_AT..].split_at(len - CIPHERTEXT_AT - TAG_LEN);
        let tag = tag.try_into().expect("16 bytes");
        let associated_data = binding.associated_data();
        let mut plain = [0u8; MAX_PLAINTEXT];
        let plain = &mut plain[..ciphertext.len()];
        let mut named = false;
        for key in self.keys_with_hint(hint) {
            named = true;
            let buffer = InOutBuf::new(ciphertext, plain).expect("equal lengths");
            if key
                .cipher()
                .decrypt_inout_detached(&nonce, &associated_data, buffer, tag)
                .is_ok()
            {
                return Claims::read_plaintext(plain).ok_or(OpenError::Malformed);
            }
        }
        Err(if named {
            OpenError::Rejected
        } else {
            OpenError::UnknownKey
        })
    }
}
