//! Keys and keyrings: rotation, hint collisions, key files, and keys that never show.

mod seal_util;

use mcp_affinity::seal::{InvalidSealKey, Keyring, KeyringError, OpenError, SealKey};
use seal_util::*;

#[test]
fn rotation_opens_old_tokens_seals_with_the_new_key_and_then_retires_the_old() {
    let (k1, k2) = (1, 2);
    let before = ring(&[k1]);
    let old = before.seal(&nonces(), &claims(UUID), &binding());

    let during = ring(&[k2, k1]);
    assert_eq!(during.sealing_hint(), key(k2).hint());
    assert_eq!(
        during.open(old.as_bytes(), &binding()).unwrap(),
        claims(UUID)
    );
    let new = during.seal(&nonces(), &claims(UUID), &binding());
    assert_eq!(decode(new.as_str())[0] & 0x3f, key(k2).hint());
    assert!(
        before.open(new.as_bytes(), &binding()).is_err(),
        "k1 alone cannot open k2's"
    );

    let after = ring(&[k2]);
    assert_eq!(
        after.open(new.as_bytes(), &binding()).unwrap(),
        claims(UUID)
    );
    let refused = after.open(old.as_bytes(), &binding());
    assert!(
        matches!(refused, Err(OpenError::UnknownKey | OpenError::Rejected)),
        "{refused:?}"
    );
}

#[test]
fn the_hint_belongs_to_the_key_not_to_its_place_in_the_ring() {
    assert_eq!(
        ring(&[1, 2]).hints().collect::<Vec<_>>(),
        [key(1).hint(), key(2).hint()]
    );
    assert_eq!(
        ring(&[2, 1]).hints().collect::<Vec<_>>(),
        [key(2).hint(), key(1).hint()]
    );
    let token = ring(&[1, 2]).seal(&nonces(), &claims(UUID), &binding());
    assert!(ring(&[2, 1]).open(token.as_bytes(), &binding()).is_ok());
}

/// Two distinct keys with the same 6-bit hint, found by search (one pair in 64 collides).
fn colliding_keys() -> (u8, u8) {
    let mut by_hint = [None; 64];
    for b in 1..=255u8 {
        let hint = usize::from(key(b).hint());
        match by_hint[hint] {
            Some(a) => return (a, b),
            None => by_hint[hint] = Some(b),
        }
    }
    unreachable!("256 keys, 64 hints")
}

#[test]
fn keys_with_the_same_hint_are_tried_in_turn_in_either_order() {
    let (a, b) = colliding_keys();
    assert_eq!(key(a).hint(), key(b).hint());
    let by_a = ring(&[a]).seal(&nonces(), &claims(UUID), &binding());
    let by_b = ring(&[b]).seal(&nonces(), &claims(PYTHON_HEX), &binding());
    for order in [[a, b], [b, a]] {
        let both = ring(&order);
        assert_eq!(
            both.open(by_a.as_bytes(), &binding()).unwrap(),
            claims(UUID)
        );
        assert_eq!(
            both.open(by_b.as_bytes(), &binding()).unwrap(),
            claims(PYTHON_HEX)
        );
    }
    // A key with the right hint but not the one that sealed: authentication fails.
    assert_eq!(
        ring(&[b]).open(by_a.as_bytes(), &binding()),
        Err(OpenError::Rejected)
    );
}

#[test]
fn a_key_prints_only_its_hint() {
    let hex = "5e".repeat(32);
    let key = SealKey::from_hex(&hex).unwrap();
    let bytes = format!("{:?}", [0x5eu8; 32]);
    for shown in [format!("{key:?}"), format!("{key:#?}")] {
        assert!(shown.contains(&format!("hint: {}", key.hint())), "{shown}");
        assert!(
            !shown.contains("5e5e") && !shown.contains("5E5E"),
            "{shown}"
        );
        assert!(!shown.contains("94, 94"), "{shown}");
        assert!(!shown.contains(&bytes), "{shown}");
    }
    let keyring = Keyring::from_lines(&format!("{hex}\n{}\n", "a7".repeat(32))).unwrap();
    let shown = format!("{keyring:?}");
    assert!(shown.contains("keys: 2"), "{shown}");
    assert!(
        !shown.contains("5e5e") && !shown.contains("a7a7"),
        "{shown}"
    );
}

#[test]
fn keys_are_64_hex_digits_of_either_case_with_whitespace_trimmed() {
    let lower = SealKey::from_hex(&"ab".repeat(32)).unwrap();
    let upper = SealKey::from_hex(&format!("  {}\n", "AB".repeat(32))).unwrap();
    let bytes = SealKey::new([0xab; 32]);
    assert_eq!(lower.hint(), bytes.hint());
    assert_eq!(upper.hint(), bytes.hint());
    for bad in [
        String::new(),
        "ab".repeat(31),
        "ab".repeat(33),
        format!("{}a", "ab".repeat(31)),
        format!("{}xy", "ab".repeat(31)),
        format!("{} {}", "ab".repeat(16), "ab".repeat(16)),
        format!("0x{}", "ab".repeat(31)),
        format!("{}é", "a".repeat(62)),
    ] {
        let error: InvalidSealKey = SealKey::from_hex(&bad).unwrap_err();
        assert_eq!(error.to_string(), "seal key is not 64 hex digits", "{bad}");
    }
}

#[test]
fn a_key_file_skips_blank_lines_and_comments() {
    let file = format!(
        "# seal keys, newest first\r\n\r\n{}  # since 2026-11-01\r\n   \n\t# retired soon\n  {}\n#{}\n",
        "01".repeat(32),
        "02".repeat(32),
        "03".repeat(32),
    );
    let keyring = Keyring::from_lines(&file).unwrap();
    assert_eq!(
        keyring.hints().collect::<Vec<_>>(),
        [key(1).hint(), key(2).hint()]
    );
    let token = ring(&[2]).seal(&nonces(), &claims(UUID), &binding());
    assert!(keyring.open(token.as_bytes(), &binding()).is_ok());
}

#[test]
fn a_bad_line_is_named_by_its_number_only() {
    let secret = "c0ffee".repeat(10); // 60 digits: almost a key
    let file = format!("# keys\n{}\n\n{secret}\n", "01".repeat(32));
    let error = Keyring::from_lines(&file).unwrap_err();
    assert_eq!(error, KeyringError::InvalidLine { line: 4 });
    let message = error.to_string();
    assert_eq!(message, "line 4 is not a key of 64 hex digits");
    assert!(!message.contains("c0ffee") && !format!("{error:?}").contains("c0ffee"));
}

#[test]
fn a_keyring_needs_a_key_and_no_key_twice() {
    assert_eq!(Keyring::new([]).unwrap_err(), KeyringError::Empty);
    assert_eq!(
        Keyring::from_lines("# nothing yet\n\n").unwrap_err(),
        KeyringError::Empty
    );
    assert_eq!(
        Keyring::new([key(1), key(2), key(1)]).unwrap_err(),
        KeyringError::DuplicateKey {
            first: 1,
            second: 3
        }
    );
    let file = format!(
        "{}\n# again\n{}\n",
        "01".repeat(32),
        "01".repeat(32).to_uppercase()
    );
    let error = Keyring::from_lines(&file).unwrap_err();
    assert_eq!(
        error,
        KeyringError::DuplicateKey {
            first: 1,
            second: 3
        }
    );
    assert_eq!(error.to_string(), "keys 1 and 3 are the same key");
}
