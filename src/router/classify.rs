//! What a request is: its MCP era, what it asks for, and the key it carries.

use http::Method;
use http::header::HeaderName;
use http::request::Parts;

use super::reject::{BadEra, Reason};
use crate::table::KeyKind;

/// The MCP transport eras a request can belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Era {
    /// 2024-11-05 HTTP+SSE: a GET stream and POSTs to its `endpoint` URL.
    HttpSse,
    /// 2025-03-26 to 2025-11-25 Streamable HTTP, with `Mcp-Session-Id` sessions.
    Streamable,
    /// 2026-07-28 and later: no sessions; tasks keyed by `Mcp-Name`.
    Modern,
}

/// What the request asks for, which decides what the router learns from its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Legacy SSE `GET` on the SSE path: placed; the `endpoint` event of the response body
    /// reveals the session, bound for as long as the stream lives.
    SseConnect,
    /// Legacy SSE message, routed by the endpoint URL's session parameter.
    SseMessage,
    /// Streamable HTTP without a session id (an `initialize`): placed; a 2xx response's
    /// `Mcp-Session-Id` is learned.
    SessionStart,
    /// Streamable HTTP `POST` with a session id.
    SessionPost,
    /// Streamable HTTP `GET` with a session id: a stream that keeps the session alive.
    SessionStream,
    /// Streamable HTTP `DELETE` with a session id: forgets the session on 2xx or 404.
    SessionDelete,
    /// A 2026-07-28 call without a key: placed; its response may create a task.
    ModernCall {
        /// Whether its response may hold a `CreateTaskResult` worth observing.
        may_create_task: bool,
    },
    /// A 2026-07-28 `tasks/get`, `tasks/update` or `tasks/cancel`, routed by `Mcp-Name`.
    TaskRequest,
    /// Anything else (non-MCP paths, keyless GETs): placed, nothing learned.
    Stateless,
}

impl Intent {
    /// The era of an MCP request; `None` for what the router routes as plain HTTP.
    pub(crate) fn era(self) -> Option<Era> {
        match self {
            Intent::SseConnect | Intent::SseMessage => Some(Era::HttpSse),
            Intent::ModernCall { .. } | Intent::TaskRequest => Some(Era::Modern),
            Intent::Stateless => None,
            _ => Some(Era::Streamable),
        }
    }

    /// Intents that start a conversation (placed by the session policy, not round robin).
    pub(crate) fn starts_conversation(self) -> bool {
        matches!(self, Intent::SseConnect | Intent::SessionStart)
    }
}

/// A classified request: its intent and the protocol key it carries, if any (not yet
/// validated).
#[derive(Debug)]
pub(crate) struct Classified<'a> {
    pub(crate) intent: Intent,
    pub(crate) key: Option<(KeyKind, &'a [u8])>,
}

/// Where legacy HTTP+SSE lives, which paths are MCP endpoints, and which `Mcp-Method`s may
/// create tasks.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    pub(crate) sse: Option<String>,
    pub(crate) messages: Vec<String>,
    /// The Streamable HTTP / 2026-07-28 endpoints; `None`: every path but `/.well-known/…`.
    pub(crate) mcp: Option<Vec<String>>,
    pub(crate) task_creating: Vec<String>,
}

/// The query parameters SDKs put the legacy SSE session in: TypeScript and older rmcp,
/// Python, Go.
const SSE_PARAMS: [&str; 3] = ["sessionId", "session_id", "sessionid"];

const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");

/// The first protocol version of the modern era.
const MODERN: &[u8; 10] = b"2026-07-28";

/// The raw value of the legacy SSE session parameter in a query string, if present;
/// `Err(())` if the query holds more than one (backends differ on which they use, so a
/// request naming two sessions is refused rather than guessed at).
pub(crate) fn sse_session_param(query: &str) -> Result<Option<&str>, ()> {
    let mut found = None;
    for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        if SSE_PARAMS.contains(&name) {
            if found.is_some() {
                return Err(());
            }
            found = Some(value);
        }
    }
    Ok(found)
}

/// The value of a header that may appear once; `Err(())` if it appears more than once.
fn single<'a>(req: &'a Parts, name: &HeaderName) -> Result<Option<&'a [u8]>, ()> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next().map(|v| v.as_bytes());
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

/// Whether `MCP-Protocol-Version` names the modern era: a well-formed `YYYY-MM-DD` on or after
/// 2026-07-28. Absent, malformed or older versions are legacy.
pub(crate) fn is_modern(version: Option<&[u8]>) -> bool {
    let Some(v) = version else {
        return false;
    };
    let well_formed = v.len() == 10
        && v.iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    well_formed && v >= &MODERN[..]
}

/// Classifies a request head.
pub(crate) fn classify<'a>(req: &'a Parts, paths: &Paths) -> Result<Classified<'a>, Reason> {
    let path = req.uri.path();
    let stateless = Ok(Classified {
        intent: Intent::Stateless,
        key: None,
    });

    // Legacy HTTP+SSE: the SSE path (GET connects; Go also POSTs there with `sessionid`) and
    // the message paths.
    if let Some(sse) = &paths.sse {
        let on_sse = path == sse;
        let on_messages = paths.messages.iter().any(|p| p == path);
        if on_sse || on_messages {
            let param = req.uri.query().map_or(Ok(None), sse_session_param);
            match param {
                Err(()) => return Err(Reason::AmbiguousKey(KeyKind::SseSession)),
                Ok(Some(id)) => {
                    return Ok(Classified {
                        intent: Intent::SseMessage,
                        key: Some((KeyKind::SseSession, id.as_bytes())),
                    });
                }
                Ok(None) if on_sse && req.method == Method::GET => {
                    return Ok(Classified {
                        intent: Intent::SseConnect,
                        key: None,
                    });
                }
                Ok(None) if on_messages => return Err(Reason::BadEra(BadEra::MissingSseSession)),
                Ok(None) => {}
            }
        }
    }

    // Paths that are not MCP endpoints are routed statelessly, whatever headers they carry:
    // OAuth discovery and the like must neither pin nor forget a session.
    let mcp_path = match &paths.mcp {
        Some(mcp) => mcp.iter().any(|p| p == path),
        None => !path.starts_with("/.well-known/"),
    };
    if !mcp_path {
        return stateless;
    }

    let header = |name: &HeaderName| req.headers.get(name).map(|v| v.as_bytes());
    if is_modern(header(&MCP_PROTOCOL_VERSION)) {
        let method = header(&MCP_METHOD).unwrap_or_default();
        if matches!(method, b"tasks/get" | b"tasks/update" | b"tasks/cancel") {
            let name = single(req, &MCP_NAME).map_err(|()| Reason::AmbiguousKey(KeyKind::Task))?;
            // A missing Mcp-Name is an empty (invalid) key.
            return Ok(Classified {
                intent: Intent::TaskRequest,
                key: Some((KeyKind::Task, name.unwrap_or_default())),
            });
        }
        let may_create_task = req.method == Method::POST
            && paths.task_creating.iter().any(|m| m.as_bytes() == method);
        return Ok(Classified {
            intent: Intent::ModernCall { may_create_task },
            key: None,
        });
    }

    let session =
        single(req, &MCP_SESSION_ID).map_err(|()| Reason::AmbiguousKey(KeyKind::Session))?;
    let Some(session) = session else {
        let intent = if req.method == Method::POST {
            Intent::SessionStart
        } else {
            Intent::Stateless
        };
        return Ok(Classified { intent, key: None });
    };
    let intent = match req.method {
        Method::GET => Intent::SessionStream,
        Method::DELETE => Intent::SessionDelete,
        _ => Intent::SessionPost,
    };
    Ok(Classified {
        intent,
        key: Some((KeyKind::Session, session)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_session_params_of_every_sdk_are_found() {
        assert_eq!(sse_session_param("sessionId=a1"), Ok(Some("a1")));
        assert_eq!(sse_session_param("x=1&session_id=b2"), Ok(Some("b2")));
        assert_eq!(sse_session_param("sessionid=c3&x=1"), Ok(Some("c3")));
        assert_eq!(sse_session_param("SessionId=d4"), Ok(None));
        assert_eq!(sse_session_param("session=e5"), Ok(None));
        assert_eq!(sse_session_param("sessionId"), Ok(None));
    }

    #[test]
    fn two_session_params_are_ambiguous_whatever_their_spelling() {
        assert_eq!(sse_session_param("session_id=a&session_id=b"), Err(()));
        assert_eq!(sse_session_param("sessionId=a&session_id=a"), Err(()));
    }

    #[test]
    fn protocol_versions_split_the_eras_at_2026_07_28() {
        assert!(!is_modern(None));
        assert!(!is_modern(Some(b"2025-11-25")));
        assert!(!is_modern(Some(b"2025-03-26")));
        assert!(!is_modern(Some(b"2026-07-27")));
        assert!(is_modern(Some(b"2026-07-28")));
        assert!(is_modern(Some(b"2027-01-01")));
        assert!(!is_modern(Some(b"draft")));
        assert!(!is_modern(Some(b"9999-99-9x")));
        assert!(!is_modern(Some(b"2026-07-28 ")));
    }
}
