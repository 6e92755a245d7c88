//! Feeds arbitrary bytes to `Keyring::open` under a fixed keyring and binding, and checks the
//! invariants: no panic; what opens re-seals into a token that opens to the same claims, and
//! opens under no other binding; and, when the input is itself a valid backend id, sealing it
//! and opening the token gives back the very same bytes (every id packing round-trips).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_affinity::TenantId;
use mcp_affinity::seal::{Binding, Claims, Keyring, MAX_TOKEN_LEN, Nonces, SealKey};
use mcp_affinity::table::{KeyKind, Principal};

/// The keyring the seeds were sealed with: `[0x5e; 32]` seals, `[0xa7; 32]` also opens.
fn keyring() -> Keyring {
    Keyring::new([SealKey::new([0x5e; 32]), SealKey::new([0xa7; 32])]).unwrap()
}

/// The binding the seeds were sealed under.
const BINDING: Binding = Binding::new(2, TenantId::new(1), Some(Principal::new(7)));

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RING: (Keyring, Nonces) = (keyring(), Nonces::new([0; 12]));
    }
    RING.with(|(ring, nonces)| {
        if let Ok(claims) = ring.open(data, &BINDING) {
            assert!(data.len() <= MAX_TOKEN_LEN);
            let again = ring.seal(nonces, &claims, &BINDING);
            assert_eq!(ring.open(again.as_bytes(), &BINDING), Ok(claims.clone()));
            let other = Binding {
                kind: KeyKind::SseSession.to_u8(),
                ..BINDING
            };
            assert!(ring.open(data, &other).is_err(), "opened under another binding");
        }
        if let Ok(claims) = Claims::new(1, 2, 3, data) {
            let token = ring.seal(nonces, &claims, &BINDING);
            let opened = ring.open(token.as_bytes(), &BINDING).expect("a fresh token opens");
            assert_eq!(opened.id_bytes(), data);
            assert_eq!(opened, claims);
        }
    });
});
