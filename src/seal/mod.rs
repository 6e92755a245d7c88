//! Sealed session ids: tokens that carry their owner, so that a fleet of routers needs no
//! shared state to route a session.
//!
//! When a backend mints a session id (the `Mcp-Session-Id` of Streamable HTTP, the session
//! query parameter of legacy SSE), the router hands the client a **sealed token** instead:
//! the owner's fleet-stable identity and the backend's own id, encrypted and authenticated
//! under a key every router of the fleet holds. When the client presents the token, any of
//! those routers opens it, forwards to the owner and restores the backend's id. This module
//! is the codec: keys ([`SealKey`]), the keyring ([`Keyring`]: the first key seals, all
//! open), the nonce sequence ([`Nonces`]), what a token carries ([`Claims`]), what it is
//! bound to ([`Binding`]), and [`Keyring::seal`] / [`Keyring::open`].
//!
//! # What it is not
//!
//! It does not pick, generate, store or load keys (the embedder reads its key file and
//! calls [`Keyring::from_lines`]), it keeps no table, it reads no clock (the router passes
//! `sealed_at` and `now` as Unix seconds) and it has no source of randomness (the embedder
//! seeds [`Nonces`]). It does not decide expiry: [`Claims::age`] gives the age, the router
//! compares it with its max age.
//!
//! # Example
//!
//! ```
//! use mcp_affinity::TenantId;
//! use mcp_affinity::seal::{Binding, Claims, Keyring, Nonces, OpenError, owner_fingerprint};
//! use mcp_affinity::table::{KeyKind, Principal};
//!
//! // Every router of the fleet loads the same key file; each seeds its own nonces.
//! let keys = format!("# current\n{}\n", "5e".repeat(32));
//! let keyring = Keyring::from_lines(&keys).unwrap();
//! let nonces = Nonces::new([7; 12]); // 12 random bytes from the OS in a real router
//!
//! // The backend at http://10.0.0.7:8000 minted a session: seal it for the client.
//! let owner = owner_fingerprint("http://10.0.0.7:8000");
//! let claims = Claims::new(owner, 1, 1_795_000_000, b"5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97")
//!     .unwrap();
//! let binding = Binding::new(KeyKind::Session.to_u8(), TenantId::DEFAULT, Some(Principal::new(42)));
//! let token = keyring.seal(&nonces, &claims, &binding);
//! assert_eq!(token.as_str().len(), 83);
//!
//! // Any router holding the key opens it under the same binding…
//! let opened = Keyring::from_lines(&keys).unwrap().open(token.as_bytes(), &binding).unwrap();
//! assert_eq!(opened.owner, owner);
//! assert_eq!(opened.id(), "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97");
//! assert_eq!(opened.age(1_795_000_030), Some(30));
//!
//! // …and under no other: another principal fails exactly like a forgery.
//! let thief = Binding { principal: Some(Principal::new(43)), ..binding };
//! assert_eq!(keyring.open(token.as_bytes(), &thief), Err(OpenError::Rejected));
//! ```
//!
//! # Token format
//!
//! A token is base64url without padding (RFC 4648 §5, strictly decoded: one spelling per
//! token) of:
//!
//! | bytes | field | |
//! |---|---|---|
//! | 1 | header | the top 2 bits are the version (1); the low 6 bits the sealing key's [hint](SealKey::hint) |
//! | 12 | nonce | 4 bytes of the router's seed, then its 64-bit counter (little-endian): [`Nonces`] |
//! | 17 + *p* | ciphertext | the plaintext below, AES-256-GCM-SIV-encrypted |
//! | 16 | tag | authenticates the plaintext, the nonce and the associated data |
//!
//! The plaintext (integers little-endian):
//!
//! | bytes | field | |
//! |---|---|---|
//! | 1 | flags | how the id is packed: 0 raw; 1 lowercase hex of even length, 2 uppercase, as bytes; 3 a canonical lowercase hyphenated UUID (`8-4-4-4-12`), 4 uppercase, as its 16 bytes |
//! | 8 | owner | [`Claims::owner`] |
//! | 4 | incarnation | [`Claims::incarnation`] |
//! | 4 | sealed at | [`Claims::sealed_at`], Unix seconds |
//! | *p* | id | the packed id: 1 to 256 bytes |
//!
//! An id is packed only when unpacking gives back its exact bytes; anything else (mixed
//! case, a hyphen out of place, an odd number of digits) goes raw. Python's 32-digit hex ids
//! and the UUIDs of rmcp and the TypeScript SDK pack into 16 bytes.
//!
//! The associated data, authenticated but not sent, is the [`Binding`]: the label
//! `mcp-affinity/seal/v1`, the key kind (1 byte), the tenant (2 bytes) and the principal (a
//! presence byte, then its 8-byte fingerprint, zero when absent).
//!
//! # Lengths
//!
//! A token is 46 bytes plus the packed id, encoded: ⌈4 × (46 + *p*) / 3⌉ characters.
//!
//! | backend id | packed | token |
//! |---|---|---|
//! | UUID, 36 characters (rmcp, TypeScript) | 16 | 83 |
//! | 32 hex digits (Python) | 16 | 83 |
//! | 36 bytes, raw | 36 | 110 |
//! | 146 bytes, raw | 146 | 256 ([`Key::DEFAULT_MAX_LEN`](crate::table::Key::DEFAULT_MAX_LEN)) |
//! | 256 bytes, raw (the worst case) | 256 | 403 ([`MAX_TOKEN_LEN`]) |
//!
//! A router bounds a presented token by [`MIN_TOKEN_LEN`] and [`MAX_TOKEN_LEN`] before any
//! work ([`Keyring::open`] does too).
//!
//! # Why AES-256-GCM-SIV
//!
//! - **Nonce-misuse resistance** (RFC 8452). Several routers seal under the same key with
//!   counter-based nonces and no coordination. With AES-GCM a repeated nonce reveals the
//!   authentication key and lets anyone forge; with GCM-SIV it reveals only that two
//!   plaintexts are identical, and two plaintexts differ by id and time. So nonces come from a
//!   seeded counter ([`Nonces`]), not from a randomness source inside the crate.
//! - **A 12-byte nonce** and a 16-byte tag: 28 bytes of overhead, a short token.
//! - **Hardware speed**: AES-NI and CLMUL on x86-64, the AES and PMULL instructions on ARMv8,
//!   detected at run time, through RustCrypto's `aes-gcm-siv` (no `unsafe` on our side). That
//!   crate itself has had no security audit (its README says so); the AES and POLYVAL
//!   implementations it is built on were audited by NCC Group with `aes-gcm`. The key schedule
//!   is computed once per key, when the keyring is built; the per-nonce key derivation (six
//!   AES blocks and a key expansion) is part of GCM-SIV itself.
//! - 256-bit keys: a margin against multi-key and multi-target attacks on a long-lived fleet key.
//!
//! # Keys, hints and rotation
//!
//! A token names its key by a 6-bit hint derived from the key itself ([`SealKey::hint`]),
//! never by a position in a file, so reordering or rotating keys never changes which key a
//! token names. Keys whose hints collide are all tried, in ring order. Rotate by putting a new
//! key first (`[k2, k1]`: `k2` seals, both open), and drop the old key once its tokens have
//! aged out. [`Keyring`] is immutable and cheap to clone; swapping it does not touch the nonce
//! sequence, which lives in [`Nonces`] (and a restart that reuses nonces is harmless anyway,
//! see above).
//!
//! # Threat model
//!
//! - **A client learns nothing** from a token: not the backend's address or name, not its
//!   incarnation, not the backend's own id, not when it was sealed. It learns the token's
//!   length (which hints at the id's packing and length) and the 6-bit key hint.
//! - **A client cannot forge, alter or splice tokens**: any change to any byte, a truncation,
//!   an extension or the nonce of one token with the body of another fails authentication,
//!   and so does a token presented under another tenant, principal or key kind.
//! - **Replays within the router's max age are possible** and harmless: the token only routes
//!   to the owner, and the backend still checks its own session (and the router its
//!   principal binding). Past max age, the router refuses it.
//! - **Failures are silent**: every [`OpenError`] must be answered like an unknown session;
//!   its variants exist for metrics.
//! - **Key compromise** lets an attacker mint tokens for any owner and id and read every
//!   token's claims: rotate the key (a new first key, then drop the old one), and treat
//!   backend ids as what they are, session handles the backend still checks.
//! - The keyring's key schedules are wiped from memory when dropped (best effort: copies left
//!   behind by moves are not); keys are never printed
//!   (their [`Debug`](std::fmt::Debug) shows hints only) and key-file errors name line numbers,
//!   never contents.

mod base64;
mod claims;
mod key;
mod pack;
mod token;

pub use claims::{Binding, Claims};
pub use key::{InvalidSealKey, Keyring, KeyringError, SealKey};
pub use token::{Nonces, OpenError, SealedToken};

use crate::table::Key;

/// The token format's version, in the top 2 bits of its first byte.
const VERSION: u8 = 1;

/// The domain label that starts every token's associated data.
const LABEL: &[u8] = b"mcp-affinity/seal/v1";

/// The longest backend id a token carries: 256 bytes, as for an affinity key
/// ([`Key::DEFAULT_MAX_LEN`]).
pub const MAX_ID: usize = Key::DEFAULT_MAX_LEN;

/// The longest token: 403 characters, for a raw id of [`MAX_ID`] bytes.
pub const MAX_TOKEN_LEN: usize = base64::encoded_len(token::MAX_RAW);

/// The shortest token: 63 characters, for a 1-byte id.
pub const MIN_TOKEN_LEN: usize = base64::encoded_len(token::MIN_RAW);

/// The owner's fleet-stable fingerprint: FNV-1a 64 of `name`'s UTF-8 bytes.
///
/// Unseeded and fixed (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), so every
/// router on every machine and every version computes the same value for the same backend
/// name. It is not a secret and need not resist collisions chosen by an attacker: names come
/// from the operator, and the token that carries it is authenticated.
///
/// ```
/// assert_eq!(mcp_affinity::seal::owner_fingerprint("a"), 0xaf63dc4c8601ec8c);
/// ```
pub const fn owner_fingerprint(name: &str) -> u64 {
    crate::backend::fnv1a(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_are_those_documented() {
        assert_eq!(MAX_TOKEN_LEN, 403);
        assert_eq!(MIN_TOKEN_LEN, 63);
        assert_eq!(token::MAX_RAW, 46 + MAX_ID);
    }

    #[test]
    fn owner_fingerprint_is_fnv_1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(owner_fingerprint(""), 0xcbf29ce484222325);
        assert_eq!(owner_fingerprint("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(owner_fingerprint("foobar"), 0x85944171f73967e8);
    }
}
