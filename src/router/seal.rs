//! Sealed ids: the router's side of [`crate::seal`]. A fleet of routers that share keys routes
//! every session without sharing any state.
//!
//! - **Sealing.** When a backend mints a session (the `Mcp-Session-Id` of an `initialize`
//!   answer, the session parameter of a legacy SSE stream's `endpoint` event), the client is
//!   handed a token that carries the owner's name and incarnation, the backend's own id, and
//!   when it was sealed, bound to the tenant, the key kind and the principal.
//! - **Opening.** A token presented by a client is opened, checked (age, owner, incarnation,
//!   health), and the request pinned to its owner; the embedder puts the backend's own id
//!   back into the request ([`Exchange::rewrite_request`]). Answers that echo the backend's id
//!   get the client's token back.
//! - **Refusing.** Anything that does not open (garbage, truncated, over-long, forged, another
//!   key, tenant or principal, expired) is answered exactly like an unknown session (404 with
//!   the JSON-RPC body); the metrics count each cause. A token naming a backend that is gone,
//!   or a previous incarnation, is answered as gone (404), and so is one naming a backend
//!   that is down, if it was sealed before the loss (less the clock skew); one naming a
//!   backend this router does not know, a newer incarnation, or a down backend after the
//!   loss (another router has seen it come back), as a router that is behind (503 +
//!   `Retry-After`): another router of the fleet may know better.
//!
//! 2026-07-28 task ids and operator keys are not sealed: they are learned from bodies or chosen
//! by clients, and stay in the session table (a fleet shares them through a shared store).

use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;

use super::Router;
use super::exchange::{Exchange, IdBuf, Routed};
use super::fleet::{Claim, Named, OwnerStatus};
use super::metrics::Counters;
use super::reject::Reason;
use super::wall::WallClock;
use crate::TenantId;
use crate::seal::{Binding, Claims, Keyring, MAX_TOKEN_LEN, Nonces, OpenError, SealedToken};
use crate::table::{Key, KeyKind, Principal, SessionTable};

/// Sealed session ids for a fleet of routers: the keyring, this router's nonce sequence, a
/// wall clock, and the bounds (see [`RouterBuilder::sealing`](super::RouterBuilder::sealing)).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`max_age`](Sealing::max_age) | 24 hours | a token older than this is refused (its client starts over) |
/// | [`clock_skew`](Sealing::clock_skew) | 2 s | how far apart the routers' clocks may be |
///
/// The router reads no clock: [`Sealing::new`] takes one reading of the monotonic clock and
/// of the wall clock, taken together, and counts Unix time from the `now` of each call. There
/// is no default key: sealing is on only when the embedder gives a [`Keyring`].
///
/// ```
/// use std::time::{Instant, SystemTime, UNIX_EPOCH};
/// use mcp_affinity::router::{Router, Sealing};
/// use mcp_affinity::seal::Keyring;
///
/// let keys = Keyring::from_lines(&"5e".repeat(32)).unwrap(); // from the fleet's key file
/// let seed = [7; 12]; // 12 random bytes from the OS
/// let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
/// let router = Router::builder()
///     .sealing(Sealing::new(keys, seed, Instant::now(), unix))
///     .build();
/// # let _ = router;
/// ```
pub struct Sealing {
    keyring: RwLock<Keyring>,
    nonces: Nonces,
    max_age: u32,
    skew: u32,
    clock: WallClock,
}

impl Sealing {
    /// Sealing with `keyring` (its first key seals, all open), nonces seeded with `seed` (12
    /// random bytes, fresh each time the router starts), and the wall clock read once:
    /// `unix_secs` is the Unix time at `now`.
    pub fn new(keyring: Keyring, seed: [u8; 12], now: Instant, unix_secs: u64) -> Self {
        Sealing {
            keyring: RwLock::new(keyring),
            nonces: Nonces::new(seed),
            max_age: 24 * 3600,
            skew: 2,
            clock: WallClock::new(now, unix_secs),
        }
    }

    /// The oldest token accepted (default 24 hours); an older token's client is told to start
    /// over. The age is kept in whole seconds, the fraction dropped: `max_age(500 ms)` means 0,
    /// which accepts only a token sealed in the current second (or ahead within the clock skew).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// How far apart the clocks of the fleet's routers may be (default 2 s): a token sealed
    /// that much in the future is still accepted, and the cut-off for tokens of a backend's
    /// lost incarnation is moved back by as much. The skew is kept in whole seconds, the
    /// fraction dropped: `clock_skew(500 ms)` means 0, and 2.5 s means 2 s. Each router reads the wall clock once, in whole seconds (`unix_secs`), so
    /// its seconds may run up to one behind its clock: the skew must cover how far apart the
    /// clocks may be plus that second (the default, 2 s, covers clocks within a second of
    /// each other; routers further apart judged a live session lost: the fourteenth
    /// review's R14-2).
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.skew = u32::try_from(skew.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// Unix seconds at `now`.
    pub(super) fn unix(&self, now: Instant) -> u32 {
        self.clock.unix(now)
    }

    /// The cut-off for tokens of an incarnation lost at `now`.
    pub(super) fn lost_cutoff(&self, now: Instant) -> u32 {
        self.unix(now).saturating_sub(self.skew)
    }

    fn seal(&self, claims: &Claims, binding: &Binding) -> SealedToken {
        self.keyring.read().seal(&self.nonces, claims, binding)
    }

    fn open(&self, token: &[u8], binding: &Binding) -> Result<Claims, OpenError> {
        self.keyring.read().open(token, binding)
    }
}

impl fmt::Debug for Sealing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keyring's Debug shows key hints only.
        f.debug_struct("Sealing")
            .field("keyring", &*self.keyring.read())
            .field("max_age", &self.max_age)
            .field("clock_skew", &self.skew)
            .finish_non_exhaustive()
    }
}

/// [`Router::set_keyring`] on a router built without [`Sealing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the router does not seal session ids")]
#[non_exhaustive]
pub struct SealingOff;

/// Why a presented value did not open as a token, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not a token: wrong length, not base64url, wrong version.
    Malformed,
    /// No key of the ring has the token's hint.
    UnknownKey,
    /// Authentication failed: forged, altered, spliced, another key, tenant, kind or
    /// principal.
    Rejected,
    /// Older than the max age, or sealed in the future beyond the clock skew.
    Expired,
}

impl Refusal {
    /// Its place in [`TOKEN_REFUSALS`](super::metrics::TOKEN_REFUSALS).
    fn index(self) -> usize {
        self as usize
    }
}

/// The key kinds that are sealed, and the `Binding` kind tag of each.
fn sealed_kind(kind: KeyKind) -> bool {
    matches!(kind, KeyKind::Session | KeyKind::SseSession)
}

fn binding(kind: KeyKind, tenant: TenantId, principal: Option<Principal>) -> Binding {
    Binding::new(kind.to_u8(), tenant, principal)
}

/// What a presented value turned out to be.
// Moved once, on the stack; boxing it would allocate on the hot path of sealed requests.
#[allow(clippy::large_enum_variant)]
pub(super) enum Presented {
    /// A token that opened: route by it.
    Routed(Routed),
    /// Not a token (or one that does not open, but a plain id the table holds): an id learned
    /// before sealing was turned on, maybe; look it up in the table.
    NotAToken,
}

impl Counters {
    fn refused(&self, why: Refusal) {
        self.incr(|s| &s.token_refused[why.index()]);
    }
}

impl<T: SessionTable> Router<T> {
    /// Replaces the keyring the router seals and opens with (rotation without restart: put a
    /// new key first, keep the old ones until their tokens aged out, then drop them).
    pub fn set_keyring(&self, keyring: Keyring) -> Result<(), SealingOff> {
        let sealing = self.config.sealing.as_ref().ok_or(SealingOff)?;
        *sealing.keyring.write() = keyring;
        Ok(())
    }

    /// Routes a request presenting `value` as a sealed session key, if it is a token.
    pub(super) fn route_sealed(
        &self,
        tenant: TenantId,
        kind: KeyKind,
        value: &[u8],
        intent: super::classify::Intent,
        principal: Option<Principal>,
        now: Instant,
    ) -> Presented {
        let Some(sealing) = self.config.sealing.as_ref().filter(|_| sealed_kind(kind)) else {
            return Presented::NotAToken;
        };
        let refuse = |why| {
            self.counters.refused(why);
            Presented::Routed(Routed::Reject(self.reject(Reason::InvalidToken(kind))))
        };
        let claims = match sealing.open(value, &binding(kind, tenant, principal)) {
            Ok(claims) => claims,
            Err(OpenError::Malformed) => return Presented::NotAToken,
            // Shaped like a token, but a plain id the table holds (one learned before sealing
            // was on, in a table that outlives the router) all the same.
            Err(_) if self.holds(tenant, kind, value, now) => return Presented::NotAToken,
            Err(OpenError::UnknownKey) => return refuse(Refusal::UnknownKey),
            Err(_) => return refuse(Refusal::Rejected),
        };
        let unix = sealing.unix(now);
        let fresh = match claims.age(unix) {
            Some(age) => age <= sealing.max_age,
            None => claims.sealed_at - unix <= sealing.skew,
        };
        if !fresh {
            return refuse(Refusal::Expired);
        }
        let gone = |reason| Presented::Routed(Routed::Reject(self.reject(reason)));
        let claim = Claim {
            incarnation: claims.incarnation,
            made: claims.sealed_at,
        };
        let named = self.fleet.named(tenant, claims.owner);
        let (owner, incarnation, loss, down_since) = match named {
            Named::Backend {
                id,
                incarnation,
                lost,
                down_since,
            } => (id, incarnation, lost, down_since),
            // A newer process than the one removed here, or sealed more than the clock skew
            // after the removal: another router added it since (or had not removed it yet).
            // Not this router's to end: 503.
            Named::Removed { at, incarnation }
                if claim.after((at, incarnation), &sealing.clock, sealing.skew) =>
            {
                return gone(Reason::UnknownOwner(kind));
            }
            Named::Removed { .. } => return gone(Reason::OwnerGone(kind)),
            Named::Unknown => return gone(Reason::UnknownOwner(kind)),
        };
        let lost = claim.lost(incarnation, loss);
        if claims.incarnation > incarnation && !lost {
            // Another router knows a newer process of this backend: this one is behind,
            // and must not decide for the session.
            return gone(Reason::UnknownOwner(kind));
        }
        let (status, term) = self.fleet.owner_state(owner, now);
        let unsure = self.unsure_of_loss(claim, down_since, &sealing.clock, sealing.skew, now);
        if status == OwnerStatus::Down && !lost && unsure {
            // Another router may have seen the new process, this one has not yet. Not this
            // router's to end: 503, as for a store binding.
            return gone(Reason::UnknownOwner(kind));
        }
        if let Some(reason) = status.refusal(kind) {
            return gone(reason);
        }
        if lost {
            return gone(Reason::OwnerGone(kind));
        }
        self.counters.incr(|s| &s.tokens_opened);
        let key = (kind, IdBuf::new(claims.id_bytes()));
        let mut exchange = self.pin(tenant, owner, term, key, intent, principal);
        exchange.token = Some(value.into());
        Presented::Routed(Routed::Forward(exchange))
    }

    /// A token for `id`, minted by the exchange's backend, if sealing is on: `Ok(None)` if it
    /// is off; `Err(OwnerGone)` if the backend is no longer one this router seals for
    /// (removed or down while its answer was on the way), `Err(UnroutableKey)` if the id
    /// cannot be carried.
    pub(super) fn seal_minted(
        &self,
        exchange: &Exchange,
        kind: KeyKind,
        id: &[u8],
        now: Instant,
    ) -> Result<Option<Bytes>, Reason> {
        let Some(sealing) = &self.config.sealing else {
            return Ok(None);
        };
        let live = self.fleet.live_in(exchange.backend, exchange.term, now);
        let identity = self
            .fleet
            .sealing_identity(exchange.backend)
            .filter(|_| live);
        let Some((owner, incarnation)) = identity else {
            return Err(Reason::OwnerGone(kind));
        };
        let claims = Claims::new(owner, incarnation, sealing.unix(now), id)
            .map_err(|_| Reason::UnroutableKey(kind))?;
        self.counters.incr(|s| &s.tokens_sealed);
        let token = sealing.seal(&claims, &binding(kind, exchange.tenant, exchange.principal));
        Ok(Some(Bytes::copy_from_slice(token.as_bytes())))
    }

    /// Whether `value`, a key of `kind` a request carries without being routed by it, is a
    /// token sealed for `tenant` and `principal`: the principal's own session, whatever its
    /// age or owner (nothing is routed by it, and a backend that gets it gets a token it
    /// cannot read as any session).
    pub(super) fn carries_own_token(
        &self,
        tenant: TenantId,
        kind: KeyKind,
        value: &[u8],
        principal: Option<Principal>,
    ) -> bool {
        let Some(sealing) = self.config.sealing.as_ref().filter(|_| sealed_kind(kind)) else {
            return false;
        };
        value.len() <= presented_bound(self.config.max_key_len)
            && sealing
                .open(value, &binding(kind, tenant, principal))
                .is_ok()
    }

    /// Whether the router seals session ids.
    pub(super) fn seals(&self) -> bool {
        self.config.sealing.is_some()
    }

    /// Whether the table holds `id` as a plain key of `kind`.
    fn holds(&self, tenant: TenantId, kind: KeyKind, id: &[u8], now: Instant) -> bool {
        Key::with_max_len(tenant, kind, id, self.config.max_key_len)
            .is_ok_and(|key| self.table.get(&key, now).is_some())
    }

    /// Why a presented key of `kind` that is neither a token nor in the table is refused:
    /// with sealing, a malformed token (answered as unknown all the same).
    pub(super) fn unknown_presented(&self, kind: KeyKind) -> Reason {
        if self.seals() && sealed_kind(kind) {
            self.counters.refused(Refusal::Malformed);
            Reason::InvalidToken(kind)
        } else {
            Reason::UnknownKey(kind)
        }
    }
}

/// `held` with the session id of an `endpoint` event's URL replaced by `token`: the URL (the
/// event's data, `url`) is found as it was sent, the last `data:` line whose whole value it
/// is in the bytes held up to the event's end (`end`: the bytes after the event, and a
/// comment or an `id:` line within it, may repeat the URL), and the id at `id_at` within it
/// is replaced. Everything else passes byte for byte: line endings, other fields, other
/// events.
pub(super) fn splice_endpoint(
    held: &[u8],
    end: usize,
    url: &[u8],
    id_at: std::ops::Range<usize>,
    token: &[u8],
) -> Option<Bytes> {
    let held_to_end = held.get(..end)?;
    let is_data_line = |at: usize| {
        let before = &held_to_end[..at];
        let name = before
            .strip_suffix(b"data: ")
            .or_else(|| before.strip_suffix(b"data:"));
        let line_start = name.is_some_and(|rest| {
            rest.is_empty()
                || rest.ends_with(b"\n")
                || rest.ends_with(b"\r")
                || rest == "\u{feff}".as_bytes()
        });
        line_start && matches!(held_to_end.get(at + url.len()), Some(b'\r' | b'\n'))
    };
    let at = memchr::memmem::rfind_iter(held_to_end, url).find(|&at| is_data_line(at))?;
    let (start, end) = (at + id_at.start, at + id_at.end);
    let mut out = BytesMut::with_capacity(held.len() - (end - start) + token.len());
    out.extend_from_slice(&held[..start]);
    out.extend_from_slice(token);
    out.extend_from_slice(&held[end..]);
    Some(out.freeze())
}

/// Presented values longer than this cannot be tokens (nor anything a backend minted, which is
/// bounded by `max_key_len`).
pub(super) const fn presented_bound(max_key_len: usize) -> usize {
    if max_key_len > MAX_TOKEN_LEN {
        max_key_len
    } else {
        MAX_TOKEN_LEN
    }
}
