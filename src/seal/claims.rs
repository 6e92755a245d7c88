//! What a token carries ([`Claims`]) and what it is bound to ([`Binding`]).

use std::fmt;

use super::pack::{self, Packing};
use super::{LABEL, MAX_ID};
use crate::TenantId;
use crate::table::{InvalidKey, Key, KeyKind, Principal};

/// The plaintext's fixed part: flags, owner, incarnation, sealed at.
pub(crate) const FIXED_LEN: usize = 1 + 8 + 4 + 4;

/// What a sealed token carries: the owner, and the id the owner minted.
///
/// Plain data, returned by value: the id is kept inline (up to [`MAX_ID`] bytes), so
/// [`Keyring::open`](super::Keyring::open) allocates nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Claims {
    /// The owner's fleet-stable fingerprint: [`owner_fingerprint`](super::owner_fingerprint)
    /// of the backend's name.
    pub owner: u64,
    /// The owner's incarnation (the embedder's fleet-stable number for this life of the
    /// backend): a restarted replica is another owner.
    pub incarnation: u32,
    /// When the token was sealed, in seconds since the Unix epoch (the router's clock).
    pub sealed_at: u32,
    /// The backend's own id, visible ASCII; bytes past `id_len` are zero.
    id: [u8; MAX_ID],
    id_len: u16,
}

impl Claims {
    /// Claims for the id `id` that the backend `owner` minted, sealed at `sealed_at`.
    ///
    /// # Errors
    ///
    /// The id must be a valid affinity key: 1 to [`MAX_ID`] bytes of visible ASCII (0x21 to
    /// 0x7E), the rule of [`Key::new`].
    pub fn new(
        owner: u64,
        incarnation: u32,
        sealed_at: u32,
        id: &[u8],
    ) -> Result<Claims, InvalidKey> {
        // The kind and tenant do not matter: only the id is checked.
        Key::new(TenantId::DEFAULT, KeyKind::Session, id)?;
        let mut claims = Claims {
            owner,
            incarnation,
            sealed_at,
            id: [0; MAX_ID],
            id_len: id.len() as u16,
        };
        claims.id[..id.len()].copy_from_slice(id);
        Ok(claims)
    }

    /// The backend's own id, to restore on the way to it.
    pub fn id(&self) -> &str {
        std::str::from_utf8(self.id_bytes()).expect("visible ASCII is UTF-8")
    }

    /// The backend's own id as bytes.
    pub fn id_bytes(&self) -> &[u8] {
        &self.id[..usize::from(self.id_len)]
    }

    /// Seconds since the token was sealed, at `now_unix` (seconds since the Unix epoch), or
    /// `None` if it was sealed after `now_unix` (another router's clock is ahead).
    ///
    /// Expiry is the router's call: it compares the age with its max age, and decides how much
    /// clock skew between routers to forgive.
    pub fn age(&self, now_unix: u32) -> Option<u32> {
        now_unix.checked_sub(self.sealed_at)
    }

    /// Writes the plaintext into `out` (at least [`FIXED_LEN`] + the id's length) and returns
    /// its length.
    pub(crate) fn write_plaintext(&self, out: &mut [u8]) -> usize {
        let (packing, packed) = pack::pack(self.id_bytes(), &mut out[FIXED_LEN..]);
        out[0] = packing as u8;
        out[1..9].copy_from_slice(&self.owner.to_le_bytes());
        out[9..13].copy_from_slice(&self.incarnation.to_le_bytes());
        out[13..17].copy_from_slice(&self.sealed_at.to_le_bytes());
        FIXED_LEN + packed
    }

    /// Reads an authenticated plaintext; `None` if it is not one [`write_plaintext`]
    /// writes (only a holder of the key could have sealed it).
    ///
    /// [`write_plaintext`]: Claims::write_plaintext
    pub(crate) fn read_plaintext(plain: &[u8]) -> Option<Claims> {
        let (fixed, packed) = plain.split_first_chunk::<FIXED_LEN>()?;
        let packing = Packing::from_u8(fixed[0])?;
        let u32_at = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4"));
        let mut claims = Claims {
            owner: u64::from_le_bytes(fixed[1..9].try_into().expect("8 bytes")),
            incarnation: u32_at(9),
            sealed_at: u32_at(13),
            id: [0; MAX_ID],
            id_len: 0,
        };
        let len = pack::unpack(packing, packed, &mut claims.id)?;
        Key::new(TenantId::DEFAULT, KeyKind::Session, &claims.id[..len]).ok()?;
        claims.id_len = len as u16;
        Some(claims)
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claims")
            .field("owner", &format_args!("{:#018x}", self.owner))
            .field("incarnation", &self.incarnation)
            .field("sealed_at", &self.sealed_at)
            .field("id", &self.id())
            .finish()
    }
}

/// What a token is bound to: authenticated, never stored in it.
///
/// The binding is the token's associated data: a token opens only under the binding it was
/// sealed under, and fails under any other exactly like a forged one
/// ([`OpenError::Rejected`](super::OpenError::Rejected)). So a token that leaks to another
/// tenant, another principal, or another kind of key (a Streamable session id presented as
/// a legacy SSE session) opens nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The kind of key the token stands in for: [`KeyKind::to_u8`] (1: legacy SSE session,
    /// 2: Streamable HTTP session).
    pub kind: u8,
    /// The tenant whose backend minted the id.
    pub tenant: TenantId,
    /// The principal the session belongs to, when the router binds principals.
    pub principal: Option<Principal>,
}

impl Binding {
    /// A binding to `kind` (a [`KeyKind::to_u8`]), `tenant` and `principal`.
    pub const fn new(kind: u8, tenant: TenantId, principal: Option<Principal>) -> Binding {
        Binding {
            kind,
            tenant,
            principal,
        }
    }

    /// The associated data: the label, the kind, the tenant (2 bytes, little-endian), the
    /// principal (a presence byte and 8 bytes, little-endian, zero when absent).
    pub(crate) fn associated_data(&self) -> [u8; LABEL.len() + 12] {
        let mut ad = [0u8; LABEL.len() + 12];
        let (label, rest) = ad.split_at_mut(LABEL.len());
        label.copy_from_slice(LABEL);
        rest[0] = self.kind;
        rest[1..3].copy_from_slice(&self.tenant.get().to_le_bytes());
        if let Some(principal) = self.principal {
            rest[3] = 1;
            rest[4..12].copy_from_slice(&principal.fingerprint().to_le_bytes());
        }
        ad
    }
}
