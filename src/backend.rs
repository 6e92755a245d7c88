//! Backend identity.

use std::fmt;

/// The identity of one incarnation of a backend replica: a slot number and a generation.
///
/// The router hands out a `BackendId` when a backend is added. Removing the backend and adding
/// it again (a restarted replica) yields the same slot with the next generation: a *different*
/// owner, so the new incarnation inherits none of the old one's sessions.
///
/// It packs into a `u32` (16-bit slot, 16-bit generation): a router holds at most 65,535
/// backend slots, and a slot's generation wraps after 65,536 re-adds (before a generation is
/// reused, the router purges whatever keys it left, so a wrapped generation inherits
/// nothing).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(u32);

impl BackendId {
    /// The owner the session table records for a key that two backends minted: it names no
    /// backend, so requests for such a key reach neither (they are answered as unknown) until
    /// the claim lapses. Its slot, 65,535, is never given to a backend.
    pub const CONTESTED: BackendId = BackendId(u32::MAX);

    /// The id of `slot` at `generation`.
    pub const fn new(slot: u16, generation: u16) -> Self {
        BackendId(((slot as u32) << 16) | generation as u32)
    }

    /// The slot number, stable across generations.
    pub const fn slot(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// The generation of the slot this id names.
    pub const fn generation(self) -> u16 {
        self.0 as u16
    }

    /// The packed form, for storage.
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// The id from its packed form.
    pub const fn from_bits(bits: u32) -> Self {
        BackendId(bits)
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendId({}g{})", self.slot(), self.generation())
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}g{}", self.slot(), self.generation())
    }
}

/// FNV-1a 64 of `bytes`: unseeded and fixed, so every router on every machine and version
/// computes the same fingerprint of a backend's name (see `seal::owner_fingerprint`).
pub(crate) const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}
