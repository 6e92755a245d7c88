//! A token opens only as it was sealed, under the binding it was sealed under, with a key of
//! the ring: every change, cut, extension, other key or other binding is refused, and no
//! input makes `open` panic.

mod seal_util;

use mcp_affinity::TenantId;
use mcp_affinity::seal::{Binding, MAX_TOKEN_LEN, OpenError};
use mcp_affinity::table::{KeyKind, Principal};
use proptest::prelude::*;
use seal_util::*;

fn sealed(id: &str) -> String {
    ring(&[1])
        .seal(&nonces(), &claims(id), &binding())
        .to_string()
}

fn open(token: &[u8]) -> Result<String, OpenError> {
    ring(&[1])
        .open(token, &binding())
        .map(|claims| claims.id().to_owned())
}

#[test]
fn every_single_bit_flip_of_the_decoded_token_is_refused() {
    for id in [UUID, PYTHON_HEX, RAW_36] {
        let raw = decode(&sealed(id));
        assert_eq!(open(encode(&raw).as_bytes()).unwrap(), id);
        for bit in 0..raw.len() * 8 {
            let mut altered = raw.clone();
            altered[bit / 8] ^= 0x80 >> (bit % 8);
            let expected = match bit {
                0..=1 => OpenError::Malformed,  // the version
                2..=7 => OpenError::UnknownKey, // the hint
                _ => OpenError::Rejected,       // nonce, ciphertext, tag
            };
            assert_eq!(
                open(encode(&altered).as_bytes()),
                Err(expected),
                "{id}: bit {bit}"
            );
        }
    }
}

#[test]
fn every_character_replaced_by_another_of_the_alphabet_is_refused() {
    for id in [UUID, RAW_36] {
        let token = sealed(id);
        for at in 0..token.len() {
            for &c in ALPHABET {
                if c == token.as_bytes()[at] {
                    continue;
                }
                let mut altered = token.clone().into_bytes();
                altered[at] = c;
                assert!(open(&altered).is_err(), "{id}: {c} at {at}");
            }
        }
    }
}

#[test]
fn truncated_tokens_are_refused() {
    let token = sealed(UUID);
    for cut in 1..token.len() {
        assert!(
            open(&token.as_bytes()[..token.len() - cut]).is_err(),
            "text cut by {cut}"
        );
    }
    let raw = decode(&token);
    for cut in 1..raw.len() {
        let shorter = encode(&raw[..raw.len() - cut]);
        assert!(open(shorter.as_bytes()).is_err(), "bytes cut by {cut}");
    }
    // Only the ciphertext cut short, the tag kept.
    let mut spliced = raw[..raw.len() - 17].to_vec();
    spliced.extend_from_slice(&raw[raw.len() - 16..]);
    assert_eq!(open(encode(&spliced).as_bytes()), Err(OpenError::Rejected));
}

#[test]
fn extended_tokens_are_refused() {
    let token = sealed(UUID);
    let raw = decode(&token);
    for extra in 1..=(MAX_TOKEN_LEN - token.len() + 8) {
        let mut longer = token.clone();
        longer.extend(std::iter::repeat_n('A', extra));
        assert!(open(longer.as_bytes()).is_err(), "text extended by {extra}");
        let mut longer = raw.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        assert!(
            open(encode(&longer).as_bytes()).is_err(),
            "bytes extended by {extra}"
        );
    }
}

#[test]
fn a_nonce_spliced_from_another_token_is_refused() {
    let keyring = ring(&[1]);
    let nonces = nonces();
    let a = decode(keyring.seal(&nonces, &claims(UUID), &binding()).as_str());
    let b = decode(keyring.seal(&nonces, &claims(UUID), &binding()).as_str());
    let mut spliced = a.clone();
    spliced[1..13].copy_from_slice(&b[1..13]);
    assert_eq!(
        keyring.open(encode(&spliced).as_bytes(), &binding()),
        Err(OpenError::Rejected)
    );
    // And the tag of one with the body of the other.
    let mut spliced = a.clone();
    let tag_at = a.len() - 16;
    spliced[tag_at..].copy_from_slice(&b[tag_at..]);
    assert_eq!(
        keyring.open(encode(&spliced).as_bytes(), &binding()),
        Err(OpenError::Rejected)
    );
}

#[test]
fn a_token_of_another_keyring_is_refused() {
    let token = sealed(UUID);
    for other in 2..=40u8 {
        let refused = ring(&[other]).open(token.as_bytes(), &binding());
        assert!(
            matches!(refused, Err(OpenError::Rejected | OpenError::UnknownKey)),
            "{refused:?}"
        );
    }
}

#[test]
fn a_token_presented_under_another_binding_is_refused() {
    let token = sealed(UUID);
    let b = binding();
    let others = [
        Binding {
            tenant: TenantId::new(4),
            ..b
        },
        Binding {
            tenant: TenantId::DEFAULT,
            ..b
        },
        Binding {
            principal: Some(Principal::new(0xfeee)),
            ..b
        },
        Binding {
            principal: None,
            ..b
        },
        Binding {
            kind: KeyKind::SseSession.to_u8(),
            ..b
        },
        Binding {
            kind: KeyKind::Task.to_u8(),
            ..b
        },
    ];
    for other in others {
        assert_eq!(
            ring(&[1]).open(token.as_bytes(), &other),
            Err(OpenError::Rejected),
            "{other:?}"
        );
    }
    // And the other way round: sealed without a principal, presented with one.
    let anonymous = Binding {
        principal: None,
        ..b
    };
    let token = ring(&[1]).seal(&nonces(), &claims(UUID), &anonymous);
    assert!(ring(&[1]).open(token.as_bytes(), &anonymous).is_ok());
    assert_eq!(
        ring(&[1]).open(
            token.as_bytes(),
            &Binding {
                principal: Some(Principal::new(0)),
                ..b
            }
        ),
        Err(OpenError::Rejected)
    );
}

#[test]
fn padding_and_the_standard_alphabet_are_refused() {
    let token = sealed(UUID);
    assert_eq!(
        open(format!("{token}=").as_bytes()),
        Err(OpenError::Malformed)
    );
    let standard = token.replace('-', "+").replace('_', "/");
    if standard != token {
        assert_eq!(open(standard.as_bytes()), Err(OpenError::Malformed));
    }
    assert_eq!(open(b""), Err(OpenError::Malformed));
    assert_eq!(open(&[b'A'; MAX_TOKEN_LEN + 1]), Err(OpenError::Malformed));
}

#[test]
fn another_version_is_malformed() {
    let mut raw = decode(&sealed(UUID));
    for version in [0u8, 2, 3] {
        raw[0] = version << 6 | (raw[0] & 0x3f);
        assert_eq!(open(encode(&raw).as_bytes()), Err(OpenError::Malformed));
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_open_and_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..(MAX_TOKEN_LEN + 16)),
    ) {
        prop_assert!(open(&bytes).is_err());
    }

    #[test]
    fn arbitrary_base64url_never_opens_and_never_panics(
        raw in proptest::collection::vec(any::<u8>(), 40..320),
        header in 0x40u8..0x80,
    ) {
        let mut raw = raw;
        raw[0] = header;
        prop_assert!(open(encode(&raw).as_bytes()).is_err());
    }
}
