//! What can go wrong: setting the store up ([`Error`]), and a call it could not answer
//! ([`Unavailable`]).

/// The store could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a Redis URL (`redis://[user:password@]host[:port][/db]`).
    #[error("invalid redis url: {0}")]
    InvalidUrl(String),
    /// The first connection failed or timed out.
    #[error("cannot connect to redis: {0}")]
    Connect(String),
}

/// Why a call got no answer from the store. Every one of them is the 503 of the outage
/// policy for a lookup, and a retry later for a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// No answer within the call's timeout.
    #[error("redis did not answer in time")]
    Timeout,
    /// The connection failed or could not be made (refused, reset, closed).
    #[error("redis connection failed")]
    Connection,
    /// The circuit is open: the store failed too often lately and is left alone for its
    /// cool-down; the call was not made.
    #[error("redis circuit open")]
    CircuitOpen,
    /// The server answered with an error, or with something that is not a binding (for a
    /// lookup: the key holds a value of another type).
    #[error("redis answered with an error")]
    Server,
    /// The key is missing, but so is the store's restart marker, or it is not the one this
    /// router's sync task last read: the store came back empty, and the bindings the routers
    /// hold are on their way back into it.
    #[error("redis came back empty")]
    Changed,
    /// The key is missing, but the store was away lately (a lost connection or an open
    /// circuit within the [recovery grace](crate::RedisStoreConfig::recovery_grace)):
    /// another router's write of it may still be queued.
    #[error("redis is recovering from an outage")]
    Recovering,
}

/// Errors by kind, as the metrics count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Timeout,
    Connection,
    Server,
    Other,
}

impl Kind {
    /// Sorts a `redis` error: a reply the server sent is a server error, one the client could
    /// not use is "other"; anything that says the connection is unusable is a connection
    /// error.
    pub(crate) fn of(error: &redis::RedisError) -> Kind {
        match error.kind() {
            // Error replies of a kind the client names, and of any other code (`WRONGTYPE`).
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => Kind::Server,
            redis::ErrorKind::UnexpectedReturnType => Kind::Other,
            _ if error.is_timeout() => Kind::Timeout,
            _ => Kind::Connection,
        }
    }

    /// Whether the store was there to answer (then the breaker counts a success).
    pub(crate) fn answered(self) -> bool {
        matches!(self, Kind::Server | Kind::Other)
    }

    pub(crate) fn unavailable(self) -> Unavailable {
        match self {
            Kind::Timeout => Unavailable::Timeout,
            Kind::Connection => Unavailable::Connection,
            Kind::Server | Kind::Other => Unavailable::Server,
        }
    }
}
