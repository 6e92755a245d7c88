//! Sealing and opening a session id, side by side in one run with the ceiling and with what
//! peers ship:
//!
//! - `seal`, `open`: [`Keyring::seal`] and [`Keyring::open`] of a canonical UUID id (rmcp,
//!   TypeScript), a 32-hex id (Python) and a 36-byte raw id, under a ring of two keys with a
//!   principal binding: the whole codec (packing, framing, base64url, AEAD);
//! - `aead-encrypt`, `aead-decrypt`: the ceiling: one AES-256-GCM-SIV encryption and one
//!   decryption of a plaintext of the same size, with the same 32 bytes of associated data
//!   and the same initialised cipher, no framing;
//! - `base64-encode`, `base64-decode`: what peers ship by default, an unauthenticated
//!   base64 of the id into a `String` / `Vec` (what "unauthenticated" costs).
//!
//! - `route/streamable-session/{plain,sealed}`: the whole routing decision of a session's call
//!   (and the request rewrite), on a router without sealing and on one with it, 256 sessions
//!   each: what sealing adds to a request.
//!
//! Run with `cargo bench --bench seal`.
//!
//! Measured on the project's 2-core machine, 2026-11-30, nothing else running (criterion
//! medians, 4 s per case; an earlier run on a loaded machine read about 1.6× higher across
//! the board, the ratios alike):
//!
//! | id | seal | open | aead-encrypt | aead-decrypt | base64-encode | base64-decode |
//! |---|---|---|---|---|---|---|
//! | UUID (36 → 16 bytes) | 445 ns | 434 ns | 360 ns | 361 ns | 61 ns | 129 ns |
//! | 32 hex (→ 16 bytes) | 440 ns | 451 ns | 368 ns | 359 ns | 55 ns | 111 ns |
//! | 36 bytes raw | 438 ns | 458 ns | 377 ns | 375 ns | 59 ns | 129 ns |
//!
//! | routing decision of a session's call (UUID id) | plain router | sealing router |
//! |---|---|---|
//! | `route` + `rewrite_request` | 200 ns | 747 ns (+547 ns: opening the token, restoring the id) |
//!
//! The AEAD is most of the cost: GCM-SIV derives two keys per nonce (six AES blocks and an
//! AES-256 key expansion) before it touches the 33 to 53 bytes of plaintext. The codec adds
//! about 60 to 100 ns to it (packing, the header, two base64url passes and zeroed stack
//! buffers), and stays under a microsecond per request with no allocation. What peers ship,
//! an unauthenticated base64 of the id, costs 55 to 130 ns a way, allocates, and protects nothing.

#![allow(clippy::disallowed_methods)] // benches may read the clock

use std::hint::black_box;
use std::time::Instant;

use aes_gcm_siv::aead::inout::InOutBuf;
use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Request;
use mcp_affinity::TenantId;
use mcp_affinity::router::{End, NewBackend, Routed, Router, Sealing};
use mcp_affinity::seal::{Binding, Claims, Keyring, Nonces, SealKey, owner_fingerprint};
use mcp_affinity::table::{KeyKind, Principal};

const KEY: [u8; 32] = [0x5e; 32];

const IDS: [(&str, &str, usize); 3] = [
    ("uuid", "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97", 16),
    ("hex32", "0f3e9a8c7b6d5e4f3a2b1c0d9e8f7a6b", 16),
    ("raw36", "sess_01J9ZQ8XK4Y2N7M3P5R6T8V0WA_abcd", 36),
];

/// A plain, allocating base64 (standard alphabet, padded), as a peer would ship it.
fn peer_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3F) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`peer_encode`]; `None` on a byte outside the alphabet.
fn peer_decode(input: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    for chunk in input.as_bytes().chunks(4) {
        let data = chunk.iter().take_while(|&&c| c != b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk[..data].iter().enumerate() {
            n |= u32::from(value(c)?) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..data]);
    }
    Some(out)
}

fn bench(c: &mut Criterion) {
    let keyring = Keyring::new([SealKey::new(KEY), SealKey::new([0xa7; 32])]).unwrap();
    let nonces = Nonces::new(*b"seed-0123456");
    let binding = Binding::new(
        KeyKind::Session.to_u8(),
        TenantId::new(1),
        Some(Principal::new(0xfeed)),
    );
    let cipher = Aes256GcmSiv::new(&KEY.into());
    let associated_data = [0x42u8; 32];
    let nonce = Nonce::default();
    let owner = owner_fingerprint("http://10.0.0.7:8000");

    let mut group = c.benchmark_group("seal");
    for (name, id, packed) in IDS {
        let claims = Claims::new(owner, 1, 1_795_000_000, id.as_bytes()).unwrap();
        let token = keyring.seal(&nonces, &claims, &binding);
        assert_eq!(keyring.open(token.as_bytes(), &binding).unwrap(), claims);
        assert_eq!(
            peer_decode(&peer_encode(id.as_bytes())).unwrap(),
            id.as_bytes()
        );

        group.bench_with_input(BenchmarkId::new("seal", name), &claims, |b, claims| {
            b.iter(|| keyring.seal(&nonces, black_box(claims), &binding))
        });
        group.bench_with_input(BenchmarkId::new("open", name), &token, |b, token| {
            b.iter(|| keyring.open(black_box(token.as_bytes()), &binding))
        });

        // The ceiling: the same plaintext size (17 fixed bytes and the packed id).
        let plaintext = vec![0x33u8; 17 + packed];
        group.bench_with_input(
            BenchmarkId::new("aead-encrypt", name),
            &plaintext,
            |b, p| {
                let mut buffer = p.clone();
                b.iter(|| {
                    cipher
                        .encrypt_inout_detached(&nonce, &associated_data, (&mut buffer[..]).into())
                        .unwrap()
                })
            },
        );
        let mut ciphertext = plaintext.clone();
        let tag = cipher
            .encrypt_inout_detached(&nonce, &associated_data, (&mut ciphertext[..]).into())
            .unwrap();
        group.bench_with_input(
            BenchmarkId::new("aead-decrypt", name),
            &ciphertext,
            |b, ct| {
                let mut out = vec![0u8; ct.len()];
                b.iter(|| {
                    let buffer = InOutBuf::new(black_box(&ct[..]), &mut out[..]).unwrap();
                    cipher
                        .decrypt_inout_detached(&nonce, &associated_data, buffer, &tag)
                        .unwrap()
                })
            },
        );

        // What peers ship: the id in plain base64.
        group.bench_with_input(BenchmarkId::new("base64-encode", name), id, |b, id| {
            b.iter(|| peer_encode(black_box(id.as_bytes())))
        });
        let encoded = peer_encode(id.as_bytes());
        group.bench_with_input(BenchmarkId::new("base64-decode", name), &encoded, |b, e| {
            b.iter(|| peer_decode(black_box(e)))
        });
    }
    group.finish();
}

/// Routers over three named backends, with 256 sessions initialized through each: one plain,
/// one sealing. Returns each with the `Mcp-Session-Id` its clients hold (the backend's id, or
/// the token).
fn routers(now: Instant) -> [(Router, Vec<String>); 2] {
    let build = |sealing: Option<Sealing>| {
        let mut builder = Router::builder();
        if let Some(sealing) = sealing {
            builder = builder.sealing(sealing);
        }
        let router = builder.build();
        for name in ["r1", "r2", "r3"] {
            let backend = NewBackend::new(TenantId::DEFAULT, &format!("http://{name}:8000"));
            router.add(backend.name(name)).unwrap();
        }
        let held = (0..256)
            .map(|i| {
                let request = parts(Request::post("/mcp"));
                let Routed::Forward(mut exchange) = router.route(&request, now) else {
                    panic!("placed")
                };
                let id = format!("5b7c0f6e-2d41-4c1e-9a3f-{i:012x}");
                let mut head = http::Response::builder()
                    .header("mcp-session-id", id)
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0;
                let _ = router.on_response_head(&mut exchange, &mut head, now);
                router.on_exchange_end(exchange, End::Completed, now);
                head.headers["mcp-session-id"].to_str().unwrap().to_string()
            })
            .collect();
        (router, held)
    };
    let keyring = Keyring::new([SealKey::new(KEY)]).unwrap();
    let sealing = Sealing::new(keyring, [7; 12], now, 1_795_000_000);
    [build(None), build(Some(sealing))]
}

fn parts(builder: http::request::Builder) -> http::request::Parts {
    builder.body(()).unwrap().into_parts().0
}

/// The whole routing decision of a session's call, plain against sealed, in the same run: the
/// sealed one opens the token and hands back the backend's id to restore
/// (`Exchange::rewrite_request`, timed too).
fn route(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("route");
    for ((router, held), name) in routers(now).into_iter().zip(["plain", "sealed"]) {
        let requests: Vec<_> = held
            .iter()
            .map(|id| {
                parts(
                    Request::post("/mcp")
                        .header("mcp-session-id", id.as_str())
                        .header("mcp-protocol-version", "2025-11-25"),
                )
            })
            .collect();
        let mut at = 0;
        group.bench_function(BenchmarkId::new("streamable-session", name), |b| {
            b.iter_batched_ref(
                || {
                    at = (at + 1) % requests.len();
                    requests[at].clone()
                },
                |request| {
                    let Routed::Forward(exchange) = router.route(request, now) else {
                        panic!("pinned")
                    };
                    exchange.rewrite_request(request);
                    black_box(exchange)
                },
                BatchSize::NumIterations(256),
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench, route);
criterion_main!(benches);
