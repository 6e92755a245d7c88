//! What the layer asks of the embedder: which errors mean "not delivered", a shared store's
//! lookups, and whether a backend refuses connections.

use std::future::Future;
use std::pin::Pin;

use crate::router::Undelivered;
use crate::router::store::Looked;

use super::Upstream;

/// Says whether an error of the inner service means that nothing of the request was written
/// (so the router may place it elsewhere, or learn that its backend is down). Implemented for
/// every `Fn(&E) -> Option<Undelivered>`.
///
/// Answer `Some` only when the request surely did not reach the backend: a connection
/// refused or timed out before a byte was sent. An error after that (a reset mid-response)
/// must be `None`: the request may have run.
pub trait Classify<E> {
    /// Why the request was not delivered, if it surely was not.
    fn undelivered(&self, error: &E) -> Option<Undelivered>;
}

impl<E, F: Fn(&E) -> Option<Undelivered>> Classify<E> for F {
    fn undelivered(&self, error: &E) -> Option<Undelivered> {
        self(error)
    }
}

/// The default [`Classify`]: every error is passed through as it is (nothing is retried).
#[derive(Clone, Copy, Debug, Default)]
pub struct PassErrors;

impl<E> Classify<E> for PassErrors {
    fn undelivered(&self, _: &E) -> Option<Undelivered> {
        None
    }
}

/// What a shared store said of a key (the owned form of [`Looked`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAnswer {
    /// The key's value.
    Found(String),
    /// The store does not have the key.
    Missing,
    /// The store did not answer in time.
    Unavailable,
}

impl StoreAnswer {
    /// As the router takes it.
    pub fn looked(&self) -> Looked<'_> {
        match self {
            StoreAnswer::Found(value) => Looked::Found(value),
            StoreAnswer::Missing => Looked::Missing,
            StoreAnswer::Unavailable => Looked::Unavailable,
        }
    }
}

/// The future of a [`StoreLookup`].
pub type LookupFuture = Pin<Box<dyn Future<Output = StoreAnswer> + Send + 'static>>;

/// Reads a key from the shared store, within the store's own timeout (an answer that does not
/// come in time is [`StoreAnswer::Unavailable`]). Implemented for every
/// `Fn(String) -> impl Future<Output = StoreAnswer>`.
pub trait StoreLookup: Send + Sync + 'static {
    /// Reads `key`.
    fn lookup(&self, key: String) -> LookupFuture;
}

impl<F, Fut> StoreLookup for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StoreAnswer> + Send + 'static,
{
    fn lookup(&self, key: String) -> LookupFuture {
        Box::pin(self(key))
    }
}

/// The future of a [`RefusalCheck`].
pub type RefusalFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// Tells whether a backend refuses connections right now (nothing listens at its address:
/// its process is gone). Implemented for every `Fn(&Upstream) -> impl Future<Output = bool>`.
pub trait RefusalCheck: Send + Sync + 'static {
    /// Whether `upstream` refuses connections.
    fn refuses(&self, upstream: &Upstream) -> RefusalFuture;
}

impl<F, Fut> RefusalCheck for F
where
    F: Fn(&Upstream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn refuses(&self, upstream: &Upstream) -> RefusalFuture {
        Box::pin(self(upstream))
    }
}
