//! Tenant identity.

use std::fmt;

/// A tenant: an isolated fleet of backends with its own namespace of affinity keys.
///
/// One tenant's key can never select another tenant's backend: every key carries its tenant.
/// Deployments without tenants use [`TenantId::DEFAULT`]. A router holds at most 65,536 tenants.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TenantId(u16);

impl TenantId {
    /// The tenant of deployments that do not use tenants.
    pub const DEFAULT: TenantId = TenantId(0);

    /// The tenant numbered `n`.
    pub const fn new(n: u16) -> Self {
        TenantId(n)
    }

    /// The tenant's number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant {}", self.0)
    }
}
