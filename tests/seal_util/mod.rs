//! Shared by the `seal_*` tests: keys, claims, bindings, and a naive base64url codec (an
//! oracle independent of the crate's) to take tokens apart.
#![allow(dead_code)]

use mcp_affinity::TenantId;
use mcp_affinity::seal::{Binding, Claims, Keyring, Nonces, SealKey};
use mcp_affinity::table::{KeyKind, Principal};

pub const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub const UUID: &str = "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97";
pub const PYTHON_HEX: &str = "0f3e9a8c7b6d5e4f3a2b1c0d9e8f7a6b";
/// 36 bytes that pack no better than raw.
pub const RAW_36: &str = "sess_01J9ZQ8XK4Y2N7M3P5R6T8V0WA_abcd";

/// A key whose bytes are all `b`.
pub fn key(b: u8) -> SealKey {
    SealKey::new([b; 32])
}

/// A keyring of keys whose bytes are all `b`, for each `b` in order.
pub fn ring(bytes: &[u8]) -> Keyring {
    Keyring::new(bytes.iter().map(|&b| key(b))).unwrap()
}

pub fn nonces() -> Nonces {
    Nonces::new(*b"seed-0123456")
}

pub fn claims(id: &str) -> Claims {
    Claims::new(0x1234_5678_9abc_def0, 7, 1_795_000_000, id.as_bytes()).unwrap()
}

pub fn binding() -> Binding {
    Binding::new(
        KeyKind::Session.to_u8(),
        TenantId::new(3),
        Some(Principal::new(0xfeed)),
    )
}

/// Base64url without padding, bit by bit.
pub fn encode(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    bits.chunks(6)
        .map(|six| {
            let v = (0..6).fold(0, |v, i| v << 1 | six.get(i).copied().unwrap_or(0));
            ALPHABET[usize::from(v)] as char
        })
        .collect()
}

/// The inverse of [`encode`] for its outputs (panics on others).
pub fn decode(text: &str) -> Vec<u8> {
    let bits: Vec<u8> = text
        .bytes()
        .flat_map(|c| {
            let v = ALPHABET.iter().position(|&a| a == c).expect("alphabet") as u8;
            (0..6).rev().map(move |i| (v >> i) & 1)
        })
        .collect();
    bits.chunks_exact(8)
        .map(|eight| eight.iter().fold(0, |v, b| v << 1 | b))
        .collect()
}
