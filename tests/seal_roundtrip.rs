//! Sealing then opening gives back the claims, byte for byte, for every id and packing; the
//! tokens are as short as documented and follow the documented format.

mod seal_util;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use mcp_affinity::seal::{
    Binding, Claims, Keyring, MAX_ID, MAX_TOKEN_LEN, MIN_TOKEN_LEN, Nonces, SealKey,
    owner_fingerprint,
};
use mcp_affinity::table::{InvalidKey, Key};
use proptest::prelude::*;
use seal_util::*;

fn round_trip(id: &str) -> usize {
    let keyring = ring(&[1]);
    let claims = claims(id);
    let token = keyring.seal(&nonces(), &claims, &binding());
    let opened = keyring.open(token.as_bytes(), &binding()).unwrap();
    assert_eq!(opened, claims);
    assert_eq!(opened.id().as_bytes(), id.as_bytes());
    token.as_str().len()
}

#[test]
fn every_packing_round_trips() {
    assert_eq!(RAW_36.len(), 36);
    let upper_uuid = UUID.to_uppercase();
    let upper_hex = PYTHON_HEX.to_uppercase();
    let longest = "~".repeat(MAX_ID);
    let longest_hex = "ab".repeat(MAX_ID / 2);
    for id in [
        UUID,
        &upper_uuid,
        PYTHON_HEX,
        &upper_hex,
        RAW_36,
        "0",
        "00",
        "x",
        &longest,
        &longest_hex,
    ] {
        round_trip(id);
    }
}

#[test]
fn ids_that_almost_look_like_uuids_round_trip() {
    for id in [
        "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c9",
        "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97a",
        "5b7c0f6e2-d41-4c1e-9a3f-8e6d2b1a0c97",
        "5b7c0f6e-2d41-4c1e-9a3f-8e6D2b1a0c97",
        "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0cg7",
        "5b7c0f6e_2d41_4c1e_9a3f_8e6d2b1a0c97",
        "------------------------------------",
        "{5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c9}",
    ] {
        round_trip(id);
    }
}

#[test]
fn tokens_are_as_long_as_documented() {
    assert_eq!(round_trip(UUID), 83);
    assert_eq!(round_trip(&UUID.to_uppercase()), 83);
    assert_eq!(round_trip(PYTHON_HEX), 83);
    assert_eq!(round_trip(RAW_36), 110);
    assert_eq!(round_trip(&"~".repeat(146)), 256);
    assert_eq!(round_trip(&"~".repeat(MAX_ID)), MAX_TOKEN_LEN);
    assert_eq!(round_trip("~"), MIN_TOKEN_LEN);
    // The size target: the common ids stay well under 120 characters.
    assert!(round_trip(UUID) < 120 && round_trip(PYTHON_HEX) < 120);
}

#[test]
fn tokens_are_valid_header_and_query_values_without_escaping() {
    let keyring = ring(&[1]);
    let nonces = nonces();
    for id in [UUID, RAW_36, &"~".repeat(MAX_ID)] {
        for _ in 0..64 {
            let token = keyring.seal(&nonces, &claims(id), &binding());
            assert!(token.as_bytes().iter().all(|c| ALPHABET.contains(c)));
            assert!(http::HeaderValue::from_str(token.as_str()).is_ok());
            let uri = format!("/messages/?session_id={token}");
            let uri: http::Uri = uri.parse().unwrap();
            assert_eq!(uri.query(), Some(&*format!("session_id={token}")));
            // A valid affinity key too (visible ASCII), should a router store one.
            assert!(
                Key::with_max_len(
                    binding().tenant,
                    mcp_affinity::table::KeyKind::Session,
                    token.as_bytes(),
                    MAX_TOKEN_LEN
                )
                .is_ok()
            );
        }
    }
}

#[test]
fn two_routers_with_the_same_keys_open_each_others_tokens() {
    let (a, b) = (ring(&[1, 2]), ring(&[1, 2]));
    let (nonces_a, nonces_b) = (Nonces::new([0xA; 12]), Nonces::new([0xB; 12]));
    let from_a = a.seal(&nonces_a, &claims(UUID), &binding());
    let from_b = b.seal(&nonces_b, &claims(UUID), &binding());
    assert_ne!(from_a, from_b, "other nonces, other tokens");
    assert_eq!(b.open(from_a.as_bytes(), &binding()).unwrap(), claims(UUID));
    assert_eq!(a.open(from_b.as_bytes(), &binding()).unwrap(), claims(UUID));
}

#[test]
fn every_token_takes_a_new_nonce() {
    let keyring = ring(&[1]);
    let nonces = nonces();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let token = keyring.seal(&nonces, &claims(UUID), &binding());
        assert!(seen.insert(decode(token.as_str())[1..13].to_vec()));
    }
}

#[test]
fn a_keyring_clone_and_its_original_share_keys() {
    let keyring = ring(&[1]);
    let clone = keyring.clone();
    let token = keyring.seal(&nonces(), &claims(UUID), &binding());
    assert_eq!(
        clone.open(token.as_bytes(), &binding()).unwrap(),
        claims(UUID)
    );
}

#[test]
fn the_age_counts_from_sealing_and_is_none_before_it() {
    let claims = claims(UUID);
    assert_eq!(claims.age(claims.sealed_at), Some(0));
    assert_eq!(claims.age(claims.sealed_at + 90), Some(90));
    assert_eq!(claims.age(claims.sealed_at - 1), None);
}

#[test]
fn claims_take_only_valid_affinity_ids() {
    let new = |id: &[u8]| Claims::new(1, 1, 1, id).map(|c| c.id().to_owned());
    assert_eq!(new(b""), Err(InvalidKey::Empty));
    assert_eq!(
        new(&[b'a'; MAX_ID + 1]),
        Err(InvalidKey::TooLong {
            len: MAX_ID + 1,
            max: MAX_ID
        })
    );
    assert_eq!(
        new(b"a b"),
        Err(InvalidKey::InvalidByte {
            index: 1,
            byte: b' '
        })
    );
    assert_eq!(
        new(b"a\xff"),
        Err(InvalidKey::InvalidByte {
            index: 1,
            byte: 0xff
        })
    );
}

#[test]
fn the_codec_is_shared_between_threads() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    fn sync<T: Send + Sync>() {}
    shared::<Keyring>();
    sync::<Nonces>();
    sync::<SealKey>();
    shared::<Claims>();
    shared::<Binding>();
}

/// The wire format, rebuilt by hand from the module docs' tables and encrypted with the
/// `aes-gcm-siv` crate directly: the codec must produce exactly these bytes.
#[test]
fn the_token_is_the_documented_format() {
    let key_bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
    let cipher = Aes256GcmSiv::new(&key_bytes.into());
    let empty: &mut [u8] = &mut [];
    let check = cipher
        .encrypt_inout_detached(
            &Nonce::default(),
            b"mcp-affinity/seal/v1 key hint",
            empty.into(),
        )
        .unwrap();
    let hint = check[0] >> 2;
    assert_eq!(SealKey::new(key_bytes).hint(), hint);

    let seed: [u8; 12] = *b"ABCD\x05\0\0\0\0\0\0\0";
    let owner = owner_fingerprint("http://10.0.0.7:8000");
    let cases: [(&str, u8, Vec<u8>); 4] = [
        (
            UUID,
            3,
            vec![
                0x5b, 0x7c, 0x0f, 0x6e, 0x2d, 0x41, 0x4c, 0x1e, 0x9a, 0x3f, 0x8e, 0x6d, 0x2b, 0x1a,
                0x0c, 0x97,
            ],
        ),
        ("AB0F", 2, vec![0xab, 0x0f]),
        ("ab0f", 1, vec![0xab, 0x0f]),
        (RAW_36, 0, RAW_36.as_bytes().to_vec()),
    ];
    for (i, (id, flags, packed)) in cases.into_iter().enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(b"ABCD");
        nonce[4..].copy_from_slice(&(5 + i as u64).to_le_bytes());

        let mut plaintext = vec![flags];
        plaintext.extend_from_slice(&owner.to_le_bytes());
        plaintext.extend_from_slice(&9u32.to_le_bytes());
        plaintext.extend_from_slice(&1_795_000_000u32.to_le_bytes());
        plaintext.extend_from_slice(&packed);

        let mut ad = b"mcp-affinity/seal/v1".to_vec();
        ad.push(2); // kind
        ad.extend_from_slice(&3u16.to_le_bytes()); // tenant
        ad.push(1); // principal present
        ad.extend_from_slice(&0xfeedu64.to_le_bytes());

        let tag = cipher
            .encrypt_inout_detached(&nonce.into(), &ad, (&mut plaintext[..]).into())
            .unwrap();
        let mut expected = vec![0b0100_0000 | hint];
        expected.extend_from_slice(&nonce);
        expected.extend_from_slice(&plaintext);
        expected.extend_from_slice(&tag);
        let expected = encode(&expected);

        // The codec, with the nonce sequence at the same point.
        let keyring = Keyring::new([SealKey::new(key_bytes)]).unwrap();
        let nonces = Nonces::new(seed);
        for _ in 0..i {
            let _ = keyring.seal(&nonces, &claims(id), &binding());
        }
        let claims = Claims::new(owner, 9, 1_795_000_000, id.as_bytes()).unwrap();
        let token = keyring.seal(&nonces, &claims, &binding());
        assert_eq!(token.as_str(), expected, "{id}");
    }
}

/// Any visible-ASCII id of 1 to 256 bytes, biased toward the shapes that pack.
fn any_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[!-~]{1,256}",
        "[0-9a-f]{1,64}",
        "[0-9A-F]{1,64}",
        "[0-9a-fA-F]{1,64}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}",
        "[0-9a-fA-F-]{36}",
        "[0-9a-f-]{30,40}",
    ]
}

proptest! {
    #[test]
    fn every_id_round_trips_byte_for_byte(
        id in any_id(),
        owner in any::<u64>(),
        incarnation in any::<u32>(),
        sealed_at in any::<u32>(),
        seed in any::<[u8; 12]>(),
    ) {
        let keyring = ring(&[1]);
        let claims = Claims::new(owner, incarnation, sealed_at, id.as_bytes()).unwrap();
        let token = keyring.seal(&Nonces::new(seed), &claims, &binding());
        prop_assert!(token.as_str().len() <= MAX_TOKEN_LEN);
        let opened = keyring.open(token.as_bytes(), &binding()).unwrap();
        prop_assert_eq!(opened.id(), id.as_str());
        prop_assert_eq!(opened, claims);
    }
}
