//! Pluggable extractors: the tenant of a request, an operator-defined affinity key, and the
//! principal. Each is a one-method trait with a blanket impl for closures, so a policy is one
//! line.

use http::request::Parts;

use crate::TenantId;
use crate::table::Principal;

/// Finds the tenant of a request (by host, path prefix, header…).
///
/// Returning `None` rejects the request with
/// [`Reason::UnknownTenant`](super::Reason::UnknownTenant).
///
/// ```
/// use http::request::Parts;
/// use mcp_affinity::TenantId;
/// use mcp_affinity::router::Router;
///
/// // Two tenants by host name; any other host is refused.
/// let router = Router::builder()
///     .tenant(|req: &Parts| match req.headers.get("host")?.as_bytes() {
///         b"a.example" => Some(TenantId::new(1)),
///         b"b.example" => Some(TenantId::new(2)),
///         _ => None,
///     })
///     .build();
/// # let _ = router;
/// ```
pub trait TenantExtractor: Send + Sync + 'static {
    /// The request's tenant, or `None` if it has none.
    fn tenant(&self, req: &Parts) -> Option<TenantId>;
}

impl<F> TenantExtractor for F
where
    F: Fn(&Parts) -> Option<TenantId> + Send + Sync + 'static,
{
    fn tenant(&self, req: &Parts) -> Option<TenantId> {
        self(req)
    }
}

/// Extracts an operator-defined affinity key from a request that carries no protocol key: an
/// `Mcp-Param-*` header, a workspace id, the authenticated user…
///
/// Such a key comes from the client, so it cannot be learned from a backend: the first
/// request carrying it is placed, and a 2xx answer binds the key to the backend that gave it.
/// Later requests with the key are pinned there. That is the trade-off: a client can choose a
/// key, but only ever reaches a backend of its own tenant that accepted it. When the owner is
/// removed, revoked or down, the next request with the key binds it afresh, as its first did;
/// the key expires after the table's idle TTL like any other.
///
/// With principal binding on ([`RouterBuilder::principal`](super::RouterBuilder::principal)),
/// [`OperatorScope`] says whose a key is: by default each principal has its own keys, so that
/// no principal can squat on a key another will present.
///
/// A closure borrowing from the request becomes an extractor with [`key_fn`]:
///
/// ```
/// use mcp_affinity::router::{Router, key_fn};
///
/// let router = Router::builder()
///     .operator_key(key_fn(|req| req.headers.get("mcp-param-workspace").map(|v| v.as_bytes())))
///     .build();
/// # let _ = router;
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key's id (validated like any key: visible ASCII, bounded length), or `None`.
    fn key<'a>(&self, req: &'a Parts) -> Option<&'a [u8]>;
}

/// Whose operator keys are whose, when principals are bound.
///
/// Without principal binding every operator key is shared, and this setting changes nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OperatorScope {
    /// Each principal (and the anonymous one) has its own namespace of operator keys: two
    /// principals presenting `acme` hold two bindings, possibly on two backends, and neither
    /// can keep the other from binding it. The default.
    #[default]
    Principal,
    /// Operator keys are shared by every principal of a tenant, and not checked against the
    /// principal: whoever presents `acme` reaches the backend `acme` was bound to. Use it when
    /// the key names something principals share (a team's workspace) and the backend
    /// authorizes each request itself: the key is a placement hint, like the affinity cookie,
    /// never a credential.
    Shared,
}

/// A [`KeyExtractor`] made of a closure; see [`key_fn`].
#[derive(Clone, Copy, Debug)]
pub struct KeyFn<F>(F);

/// Makes a [`KeyExtractor`] of a closure that borrows the key from the request.
///
/// (Closures returning a borrow of their argument need this nudge for the compiler to see
/// them as working for every request lifetime.)
pub fn key_fn<F>(f: F) -> KeyFn<F>
where
    F: for<'a> Fn(&'a Parts) -> Option<&'a [u8]> + Send + Sync + 'static,
{
    KeyFn(f)
}

impl<F> KeyExtractor for KeyFn<F>
where
    F: for<'a> Fn(&'a Parts) -> Option<&'a [u8]> + Send + Sync + 'static,
{
    fn key<'a>(&self, req: &'a Parts) -> Option<&'a [u8]> {
        (self.0)(req)
    }
}

/// Fingerprints the authenticated principal of a request, for example by hashing its bearer
/// token, so that a key learned under one principal is refused to another.
///
/// A key learned with a principal is only routed for requests with the same fingerprint; a
/// request with another (or none) is rejected exactly as an unknown key (404), as the Python
/// SDK does. A key learned without a principal is routed only for requests without one.
pub trait PrincipalExtractor: Send + Sync + 'static {
    /// The request's principal, or `None` if it is anonymous.
    fn principal(&self, req: &Parts) -> Option<Principal>;
}

impl<F> PrincipalExtractor for F
where
    F: Fn(&Parts) -> Option<Principal> + Send + Sync + 'static,
{
    fn principal(&self, req: &Parts) -> Option<Principal> {
        self(req)
    }
}
