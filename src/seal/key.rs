//! Seal keys and the keyring: the first key seals, every key opens.

use std::fmt;
use std::sync::Arc;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use zeroize::Zeroize;

use super::VERSION;
use super::pack::nibble;

/// The associated data of a key's check value: the domain label and a purpose.
const CHECK_LABEL: &[u8] = b"mcp-affinity/seal/v1 key hint";

/// How many bits of the token's first byte name the key.
pub(crate) const HINT_BITS: u32 = 6;

/// A 256-bit AES-256-GCM-SIV key that seals and opens tokens.
///
/// The key never leaves its type: there is no accessor for its bytes, [`Debug`](fmt::Debug)
/// prints only its [hint](SealKey::hint), and the expanded key (which contains the key) is
/// wiped when it is dropped. That is best effort, as anywhere in Rust: a move (into a
/// keyring, say) copies the value and leaves the old bytes unwiped, and copies the caller
/// still holds (the array given to [`new`](SealKey::new), the text given to
/// [`from_hex`](SealKey::from_hex)) are the caller's to wipe.
///
/// Generate keys with a CSPRNG, for example `openssl rand -hex 32`. There is no default key.
pub struct SealKey {
    cipher: Aes256GcmSiv,
    /// The key's tag over an empty message under [`CHECK_LABEL`] (a one-way function of the
    /// key, as public as the hint it gives): tells keys apart without keeping their bytes.
    check: [u8; 16],
}

/// A seal key was not 64 hex digits.
///
/// The message never echoes what was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("seal key is not 64 hex digits")]
#[non_exhaustive]
pub struct InvalidSealKey;

impl SealKey {
    /// A key from its 32 bytes.
    pub fn new(mut bytes: [u8; 32]) -> SealKey {
        let key = SealKey::from_bytes(&bytes);
        bytes.zeroize();
        key
    }

    /// A key from exactly 64 hex digits (either case), surrounding whitespace ignored.
    ///
    /// ```
    /// use mcp_affinity::seal::SealKey;
    ///
    /// let key = SealKey::from_hex(&"4d".repeat(32)).unwrap();
    /// assert!(key.hint() < 64);
    /// assert!(SealKey::from_hex("4d4d").is_err());
    /// ```
    pub fn from_hex(text: &str) -> Result<SealKey, InvalidSealKey> {
        let digits = text.trim().as_bytes();
        if digits.len() != 64 {
            return Err(InvalidSealKey);
        }
        let mut bytes = [0u8; 32];
        let mut valid = true;
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => valid = false,
            }
        }
        let key = valid.then(|| SealKey::from_bytes(&bytes));
        bytes.zeroize();
        key.ok_or(InvalidSealKey)
    }

    fn from_bytes(bytes: &[u8; 32]) -> SealKey {
        let cipher = Aes256GcmSiv::new(bytes.into());
        let tag = cipher
            .encrypt_inout_detached(&Nonce::default(), CHECK_LABEL, (&mut [][..]).into())
            .expect("an empty message is within the limits");
        SealKey {
            cipher,
            check: tag.into(),
        }
    }

    /// The key's hint: 6 bits (0 to 63) that every token it seals carries in the clear, so
    /// that opening tries only the keys that may have sealed it.
    ///
    /// The hint is derived from the key itself (the top 6 bits of the first byte of its
    /// AES-256-GCM-SIV tag over an empty message, with an all-zero nonce and the associated
    /// data `mcp-affinity/seal/v1 key hint`), never from its place in a keyring: reordering a
    /// key file never changes which key a token names. Distinct keys share a hint one time in
    /// 64; opening then tries each of them. Log it to tell which key seals; it reveals nothing
    /// about the key.
    pub fn hint(&self) -> u8 {
        self.check[0] >> (8 - HINT_BITS)
    }

    /// The token's first byte: the version and the hint.
    pub(crate) fn header(&self) -> u8 {
        VERSION << HINT_BITS | self.hint()
    }

    pub(crate) fn cipher(&self) -> &Aes256GcmSiv {
        &self.cipher
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("hint", &self.hint())
            .finish_non_exhaustive()
    }
}

/// Why a keyring could not be built.
///
/// Messages name positions, never key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// No key was given.
    #[error("a keyring needs at least one key")]
    Empty,
    /// The same key was given twice. Positions count from 1 in the order given; for
    /// [`Keyring::from_lines`], they are line numbers.
    #[error("keys {first} and {second} are the same key")]
    DuplicateKey {
        /// Where the key first appears.
        first: usize,
        /// Where it appears again.
        second: usize,
    },
    /// A line of a key file is neither blank, a comment, nor 64 hex digits.
    #[error("line {line} is not a key of 64 hex digits")]
    InvalidLine {
        /// The line's number, counted from 1.
        line: usize,
    },
}

/// The keys of a router: the first key seals, every key opens.
///
/// Rotate by prepending: `[k2, k1]` seals with `k2` and still opens what `k1` sealed; once
/// tokens sealed by `k1` are older than the router's max age, drop it: `[k2]`. Every router
/// of a fleet must hold every key that any of them seals with, so roll a new key out in two
/// steps: first append it everywhere (it opens), then move it first (it seals).
///
/// A keyring is immutable and cheap to clone (an [`Arc`] inside); the key schedules are
/// computed once, when it is built. To swap keys at run time, build a new keyring and
/// replace the shared one (behind a lock or an atomic pointer): nothing else needs to
/// change, since the nonce sequence lives in [`Nonces`](super::Nonces), not here. Its
/// [`Debug`](fmt::Debug) shows the number of keys and their hints only.
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<[SealKey]>,
}

impl Keyring {
    /// A keyring of `keys`, in order: the first seals.
    ///
    /// # Errors
    ///
    /// [`KeyringError::Empty`] without keys; [`KeyringError::DuplicateKey`] if a key repeats.
    pub fn new(keys: impl IntoIterator<Item = SealKey>) -> Result<Keyring, KeyringError> {
        Keyring::numbered(keys.into_iter().enumerate().map(|(i, key)| (i + 1, key)))
    }

    /// A keyring from the text of a key file: one key per line as 64 hex digits (either case);
    /// surrounding whitespace, blank lines and `#` comments (whole lines, or after a key) are
    /// ignored. The first key seals.
    ///
    /// ```
    /// use mcp_affinity::seal::{Keyring, KeyringError};
    ///
    /// let file = format!("# sealing key\n{}\n\n# previous key\n{}  # until 2026-12-01\n",
    ///     "a1".repeat(32), "b2".repeat(32));
    /// assert_eq!(Keyring::from_lines(&file).unwrap().hints().len(), 2);
    /// assert_eq!(
    ///     Keyring::from_lines("# no key yet\nnot-a-key\n").unwrap_err(),
    ///     KeyringError::InvalidLine { line: 2 }
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyringError::InvalidLine`] with the number of the first bad line (its text is never
    /// echoed), [`KeyringError::Empty`] or [`KeyringError::DuplicateKey`] (line numbers).
    pub fn from_lines(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let key = SealKey::from_hex(content)
                .map_err(|_| KeyringError::InvalidLine { line: i + 1 })?;
            keys.push((i + 1, key));
        }
        Keyring::numbered(keys)
    }

    /// Builds from keys numbered by their position (or line), for error messages.
    fn numbered(keys: impl IntoIterator<Item = (usize, SealKey)>) -> Result<Keyring, KeyringError> {
        let mut seen: Vec<(usize, SealKey)> = Vec::new();
        for (at, key) in keys {
            if let Some((first, _)) = seen.iter().find(|(_, k)| k.check == key.check) {
                return Err(KeyringError::DuplicateKey {
                    first: *first,
                    second: at,
                });
            }
            seen.push((at, key));
        }
        if seen.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring {
            keys: seen.into_iter().map(|(_, key)| key).collect(),
        })
    }

    /// The key that seals.
    pub(crate) fn sealing_key(&self) -> &SealKey {
        &self.keys[0]
    }

    /// The keys that may have sealed a token whose first byte carries `hint`, in ring order.
    pub(crate) fn keys_with_hint(&self, hint: u8) -> impl Iterator<Item = &SealKey> {
        self.keys.iter().filter(move |key| key.hint() == hint)
    }

    /// The hint of the key that seals (log it when a keyring is installed).
    pub fn sealing_hint(&self) -> u8 {
        self.sealing_key().hint()
    }

    /// The hints of the keys, in ring order (their number is the number of keys).
    pub fn hints(&self) -> impl ExactSizeIterator<Item = u8> + '_ {
        self.keys.iter().map(SealKey::hint)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Hints<'a>(&'a Keyring);
        impl fmt::Debug for Hints<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.hints()).finish()
            }
        }
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .field("hints", &Hints(self))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expanded_key_is_wiped_on_drop() {
        // `SealKey` keeps no bytes of its own; the AES key schedule inside the cipher is
        // `ZeroizeOnDrop` because the `aes/zeroize` feature is on.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes::Aes256>();
    }

    #[test]
    fn hints_fit_in_six_bits() {
        for b in 0..=255u8 {
            let key = SealKey::new([b; 32]);
            assert!(key.hint() < 64);
            assert_eq!(key.header() >> HINT_BITS, VERSION);
        }
    }
}
