//! Strict base64url without padding (RFC 4648 §5), into and out of caller buffers.
//!
//! Strict means canonical: decoding accepts exactly the strings [`encode`] produces. It
//! refuses any byte outside `A–Z a–z 0–9 - _` (padding `=` included), a length of 4n + 1, and
//! a last character whose unused low bits are not zero, so no token has two spellings.

/// The base64url alphabet.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Marks a byte outside the alphabet in [`DECODE`].
const INVALID: u8 = 0xFF;

/// Each byte's 6-bit value, or [`INVALID`].
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The input is not canonical base64url without padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InvalidBase64;

/// The length of the encoding of `n` bytes.
pub(crate) const fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// The number of bytes `n` characters decode to, or `None` if no encoding has that length.
pub(crate) const fn decoded_len(n: usize) -> Option<usize> {
    if n % 4 == 1 { None } else { Some(n * 3 / 4) }
}

/// Encodes `input` into the front of `out` and returns the length written.
///
/// # Panics
///
/// If `out` is shorter than [`encoded_len`]`(input.len())`.
pub(crate) fn encode(input: &[u8], out: &mut [u8]) -> usize {
    let len = encoded_len(input.len());
    let out = &mut out[..len];
    let char_of = |bits: u32| ALPHABET[(bits & 0x3F) as usize];
    let mut chunks = input.chunks_exact(3);
    let mut at = 0;
    for chunk in &mut chunks {
        let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        out[at..at + 4].copy_from_slice(&[
            char_of(n >> 18),
            char_of(n >> 12),
            char_of(n >> 6),
            char_of(n),
        ]);
        at += 4;
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out[at..].copy_from_slice(&[char_of(n >> 18), char_of(n >> 12)]);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out[at..].copy_from_slice(&[char_of(n >> 18), char_of(n >> 12), char_of(n >> 6)]);
        }
        _ => {}
    }
    len
}

/// Decodes `input` into the front of `out` and returns the length written.
///
/// # Panics
///
/// If `out` is shorter than [`decoded_len`]`(input.len())`.
pub(crate) fn decode(input: &[u8], out: &mut [u8]) -> Result<usize, InvalidBase64> {
    let len = decoded_len(input.len()).ok_or(InvalidBase64)?;
    let out = &mut out[..len];
    // The 6-bit values of `chars`, packed big-endian; fails on a byte outside the alphabet.
    let bits = |chars: &[u8]| {
        chars
            .iter()
            .try_fold(0u32, |n, &c| match DECODE[usize::from(c)] {
                INVALID => Err(InvalidBase64),
                v => Ok(n << 6 | u32::from(v)),
            })
    };
    let mut chunks = input.chunks_exact(4);
    let mut at = 0;
    for chunk in &mut chunks {
        let n = bits(chunk)?;
        out[at..at + 3].copy_from_slice(&n.to_be_bytes()[1..]);
        at += 3;
    }
    match chunks.remainder() {
        [] => {}
        rest => {
            // 2 characters carry 1 byte and 4 unused bits; 3 carry 2 bytes and 2 unused bits.
            let unused = 6 * rest.len() % 8;
            let n = bits(rest)?;
            if n & ((1 << unused) - 1) != 0 {
                return Err(InvalidBase64);
            }
            let n = n >> unused;
            let bytes = rest.len() - 1;
            out[at..].copy_from_slice(&n.to_be_bytes()[4 - bytes..]);
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encode_vec(input: &[u8]) -> Vec<u8> {
        let mut out = vec![0; encoded_len(input.len())];
        let n = encode(input, &mut out);
        assert_eq!(n, out.len());
        out
    }

    fn decode_vec(input: &[u8]) -> Result<Vec<u8>, InvalidBase64> {
        let mut out = vec![0; decoded_len(input.len()).unwrap_or(0)];
        let n = decode(input, &mut out)?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    #[test]
    fn rfc_4648_vectors_encode_without_padding() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode_vec(plain.as_bytes()), encoded.as_bytes());
            assert_eq!(decode_vec(encoded.as_bytes()).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn the_url_safe_alphabet_replaces_plus_and_slash() {
        assert_eq!(encode_vec(&[0xFB, 0xFF]), b"-_8");
        assert_eq!(decode_vec(b"-_8").unwrap(), [0xFB, 0xFF]);
        assert_eq!(decode_vec(b"+/8"), Err(InvalidBase64));
    }

    #[test]
    fn padding_and_impossible_lengths_are_refused() {
        assert_eq!(decode_vec(b"Zg=="), Err(InvalidBase64));
        assert_eq!(decode_vec(b"Zm8="), Err(InvalidBase64));
        assert_eq!(decode_vec(b"Z"), Err(InvalidBase64));
        assert_eq!(decode_vec(b"Zm9vY"), Err(InvalidBase64));
    }

    #[test]
    fn non_zero_trailing_bits_are_refused() {
        // "Zg" is 0x66; "Zh" … "Zv" set some of the 4 unused bits.
        assert_eq!(decode_vec(b"Zh"), Err(InvalidBase64));
        assert_eq!(decode_vec(b"Zv"), Err(InvalidBase64));
        // "Zm8" is "fo"; "Zm9" sets one of the 2 unused bits.
        assert_eq!(decode_vec(b"Zm9"), Err(InvalidBase64));
    }

    #[test]
    fn lengths_match_the_encoder() {
        for n in 0..64 {
            let encoded = encoded_len(n);
            assert_eq!(decoded_len(encoded), Some(n));
        }
    }

    fn alphabet_string() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(ALPHABET.as_slice()), 0..80)
    }

    proptest! {
        #[test]
        fn every_byte_string_round_trips(input in proptest::collection::vec(any::<u8>(), 0..400)) {
            let encoded = encode_vec(&input);
            prop_assert!(encoded.iter().all(|c| ALPHABET.contains(c)));
            prop_assert_eq!(decode_vec(&encoded).unwrap(), input);
        }

        /// Strictness: whatever decodes is the one canonical encoding of what it decodes to.
        #[test]
        fn only_canonical_strings_decode(input in alphabet_string()) {
            if let Ok(bytes) = decode_vec(&input) {
                prop_assert_eq!(encode_vec(&bytes), input);
            } else {
                // Refused only for a length of 4n + 1 or non-zero unused bits.
                let last = input.last().map(|&c| DECODE[usize::from(c)]).unwrap_or(0);
                let refused_for_bits = match input.len() % 4 {
                    2 => last & 0x0F != 0,
                    3 => last & 0x03 != 0,
                    _ => false,
                };
                prop_assert!(input.len() % 4 == 1 || refused_for_bits);
            }
        }

        #[test]
        fn a_byte_outside_the_alphabet_is_refused(
            input in alphabet_string(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>().prop_filter("outside", |b| !ALPHABET.contains(b)),
        ) {
            let mut input = input;
            input.insert(at.index(input.len() + 1), byte);
            prop_assert_eq!(decode_vec(&input), Err(InvalidBase64));
        }
    }
}
