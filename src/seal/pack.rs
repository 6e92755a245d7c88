//! How a backend's id is packed into the plaintext to keep tokens short.
//!
//! An id is packed only when unpacking gives back the very same bytes, so every id
//! round-trips byte for byte; anything else goes raw.

use std::ops::Range;

use super::MAX_ID;

/// How an id is packed: the plaintext's `flags` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Packing {
    /// The id's bytes as they are.
    Raw = 0,
    /// Lowercase hex of even length (Python's 32-digit ids), two digits per byte.
    HexLower = 1,
    /// Uppercase hex of even length, two digits per byte.
    HexUpper = 2,
    /// A canonical lowercase hyphenated UUID (rmcp, the TypeScript SDK), as its 16 bytes.
    UuidLower = 3,
    /// An uppercase hyphenated UUID, as its 16 bytes.
    UuidUpper = 4,
}

impl Packing {
    /// The packing stored as `flags`.
    pub(crate) fn from_u8(flags: u8) -> Option<Packing> {
        Some(match flags {
            0 => Packing::Raw,
            1 => Packing::HexLower,
            2 => Packing::HexUpper,
            3 => Packing::UuidLower,
            4 => Packing::UuidUpper,
            _ => return None,
        })
    }
}

/// A hyphenated UUID's groups of hex digits, `8-4-4-4-12`, as ranges of its characters;
/// a hyphen follows each group but the last.
const GROUPS: [Range<usize>; 5] = [0..8, 9..13, 14..18, 19..23, 24..36];
/// A hyphenated UUID's length.
const UUID_LEN: usize = 36;

/// The case of a string of hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Lower,
    Upper,
}

/// The value of a hex digit of either case.
pub(crate) fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The one case all of `digits` are in (digits alone count as lowercase), or `None` if some
/// byte is not a hex digit or the cases are mixed.
fn hex_case(digits: &[u8]) -> Option<Case> {
    let (mut lower, mut upper) = (false, false);
    for &c in digits {
        match c {
            b'0'..=b'9' => {}
            b'a'..=b'f' => lower = true,
            b'A'..=b'F' => upper = true,
            _ => return None,
        }
    }
    match (lower, upper) {
        (_, false) => Some(Case::Lower),
        (false, true) => Some(Case::Upper),
        (true, true) => None,
    }
}

/// Writes the bytes that `digits` (hex of even length, checked) spell into `out`; returns
/// their number.
fn hex_to_bytes(digits: &[u8], out: &mut [u8]) -> usize {
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let value = |c| nibble(c).expect("a checked hex digit");
        *byte = value(pair[0]) << 4 | value(pair[1]);
    }
    digits.len() / 2
}

/// Writes two hex digits per byte of `bytes` into `out`.
fn bytes_to_hex(bytes: &[u8], case: Case, out: &mut [u8]) {
    let digits: &[u8; 16] = match case {
        Case::Lower => b"0123456789abcdef",
        Case::Upper => b"0123456789ABCDEF",
    };
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = digits[usize::from(b >> 4)];
        pair[1] = digits[usize::from(b & 0x0F)];
    }
}

/// Packs `id` (a valid id: 1 to [`MAX_ID`] bytes of visible ASCII) into `out` (at least
/// `id.len()` bytes), returning the packing and the packed length.
pub(crate) fn pack(id: &[u8], out: &mut [u8]) -> (Packing, usize) {
    if id.len() == UUID_LEN && GROUPS[..4].iter().all(|group| id[group.end] == b'-') {
        // The hyphens are where they belong; the 32 digits must be hex of one case.
        let mut digits = [0u8; 32];
        let mut at = 0;
        for group in GROUPS {
            digits[at..at + group.len()].copy_from_slice(&id[group.clone()]);
            at += group.len();
        }
        match hex_case(&digits) {
            Some(Case::Lower) => return (Packing::UuidLower, hex_to_bytes(&digits, out)),
            Some(Case::Upper) => return (Packing::UuidUpper, hex_to_bytes(&digits, out)),
            None => {}
        }
    }
    if id.len() % 2 == 0 {
        match hex_case(id) {
            Some(Case::Lower) => return (Packing::HexLower, hex_to_bytes(id, out)),
            Some(Case::Upper) => return (Packing::HexUpper, hex_to_bytes(id, out)),
            None => {}
        }
    }
    out[..id.len()].copy_from_slice(id);
    (Packing::Raw, id.len())
}

/// Unpacks `packed` into `out`, returning the id's length; `None` if `packed` cannot be what
/// [`pack`] wrote (raw bytes are left to the caller to check).
pub(crate) fn unpack(packing: Packing, packed: &[u8], out: &mut [u8; MAX_ID]) -> Option<usize> {
    let case = match packing {
        Packing::Raw => {
            out.get_mut(..packed.len())?.copy_from_slice(packed);
            return Some(packed.len());
        }
        Packing::HexLower | Packing::UuidLower => Case::Lower,
        Packing::HexUpper | Packing::UuidUpper => Case::Upper,
    };
    if matches!(packing, Packing::HexLower | Packing::HexUpper) {
        let len = packed.len() * 2;
        if packed.is_empty() || len > MAX_ID {
            return None;
        }
        bytes_to_hex(packed, case, &mut out[..len]);
        return Some(len);
    }
    if packed.len() != 16 {
        return None;
    }
    let mut from = 0;
    for group in GROUPS {
        let bytes = group.len() / 2;
        bytes_to_hex(&packed[from..from + bytes], case, &mut out[group.clone()]);
        from += bytes;
        if group.end < UUID_LEN {
            out[group.end] = b'-';
        }
    }
    Some(UUID_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(id: &str) -> (Packing, usize) {
        let mut packed = [0u8; MAX_ID];
        let (packing, n) = pack(id.as_bytes(), &mut packed);
        let mut out = [0u8; MAX_ID];
        let len = unpack(packing, &packed[..n], &mut out).unwrap();
        assert_eq!(&out[..len], id.as_bytes(), "{id} via {packing:?}");
        (packing, n)
    }

    #[test]
    fn each_shape_gets_its_packing() {
        let uuid = "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97";
        assert_eq!(round_trip(uuid), (Packing::UuidLower, 16));
        assert_eq!(round_trip(&uuid.to_uppercase()), (Packing::UuidUpper, 16));
        let python = "0f3e9a8c7b6d5e4f3a2b1c0d9e8f7a6b";
        assert_eq!(round_trip(python), (Packing::HexLower, 16));
        assert_eq!(round_trip(&python.to_uppercase()), (Packing::HexUpper, 16));
        assert_eq!(round_trip("1234"), (Packing::HexLower, 2));
        assert_eq!(round_trip("x"), (Packing::Raw, 1));
    }

    #[test]
    fn ids_that_almost_look_packable_go_raw() {
        for id in [
            "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c9",   // 35 chars
            "5b7c0f6e2-d41-4c1e-9a3f-8e6d2b1a0c97",  // a hyphen moved
            "5b7c0f6e-2d41-4c1e-9a3f-8e6D2b1a0c97",  // mixed case
            "5b7c0f6e-2d41-4c1e-9a3f-8e6g2b1a0c97",  // not hex
            "0f3e9a8c7b6d5e4f3a2b1c0d9e8f7a6",       // odd length
            "0f3e9a8c7b6d5e4F3a2b1c0d9e8f7a6b",      // mixed case
            "01234567890123456789012345678901234-5", // hyphens elsewhere
        ] {
            assert_eq!(round_trip(id), (Packing::Raw, id.len()), "{id}");
        }
    }

    #[test]
    fn impossible_packed_lengths_do_not_unpack() {
        let mut out = [0u8; MAX_ID];
        assert_eq!(unpack(Packing::UuidLower, &[0; 15], &mut out), None);
        assert_eq!(unpack(Packing::HexLower, &[], &mut out), None);
        assert_eq!(unpack(Packing::HexUpper, &[0; 129], &mut out), None);
        assert_eq!(unpack(Packing::Raw, &[b'a'; 257], &mut out), None);
    }
}
