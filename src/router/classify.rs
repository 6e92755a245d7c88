//! What a request is: its MCP era, what it asks for, and the key it carries.

use std::borrow::Cow;
use std::ops::Range;

use http::Method;
use http::request::Parts;

use super::path;
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
    /// Streamable HTTP `POST` without a session id: placed; a 2xx response's
    /// `Mcp-Session-Id` is learned. An `initialize` unless it carries `MCP-Protocol-Version`,
    /// which clients send only once initialized: then a call to a server that runs without
    /// sessions, which may have effects.
    SessionStart {
        /// It carries `MCP-Protocol-Version`: not an `initialize`.
        versioned: bool,
    },
    /// Streamable HTTP `POST` with a session id.
    SessionPost,
    /// Streamable HTTP `GET` with a session id: a stream that keeps the session alive.
    SessionStream,
    /// Streamable HTTP `DELETE` with a session id: forgets the session on 2xx (and, as for any
    /// request of a session, on 404 when principals are bound).
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
        matches!(
            self,
            Intent::SseConnect | Intent::SessionStart { versioned: false }
        )
    }

    /// Intents whose 2xx response body the router reads for a key: a legacy SSE connect's
    /// `endpoint` event, and (feature `tasks`) the task a 2026-07-28 call may create.
    pub(crate) fn reads_body(self) -> bool {
        match self {
            Intent::SseConnect => true,
            Intent::ModernCall { may_create_task } => may_create_task && cfg!(feature = "tasks"),
            _ => false,
        }
    }
}

/// A classified request: its intent, the protocol key that routes it, if any, and the keys it
/// carries without being routed by them (keys are not yet validated).
#[derive(Debug)]
pub(crate) struct Classified<'a> {
    pub(crate) intent: Intent,
    pub(crate) key: Option<(KeyKind, Cow<'a, [u8]>)>,
    pub(crate) carried: Carried<'a>,
}

/// Keys a request carries on a path or in an era where they do not route it: an
/// `Mcp-Session-Id` on a non-endpoint path or with a 2026-07-28 version, a session query
/// parameter off the legacy SSE paths, a task's `Mcp-Name` under a legacy version or off the
/// endpoints. A backend that reads paths or versions differently may still take the request
/// as one of that session's or task's, so the router checks them against the principal all
/// the same.
#[derive(Debug, Default)]
pub(crate) struct Carried<'a> {
    pub(crate) session: Option<&'a [u8]>,
    pub(crate) sse: Option<Cow<'a, [u8]>>,
    pub(crate) task: Option<&'a [u8]>,
}

impl Carried<'_> {
    /// The carried keys, by kind.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (KeyKind, &[u8])> {
        [
            self.session.map(|id| (KeyKind::Session, id)),
            self.sse.as_deref().map(|id| (KeyKind::SseSession, id)),
            self.task.map(|id| (KeyKind::Task, id)),
        ]
        .into_iter()
        .flatten()
    }
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

// The MCP headers' names, as `http` holds every name: lowercase.
const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
const MCP_METHOD: &str = "mcp-method";
const MCP_NAME: &str = "mcp-name";
const MCP_SESSION_ID: &str = "mcp-session-id";

/// `Mcp-Session-Id`, for the router's edits of heads.
pub(super) const SESSION_HEADER: http::HeaderName = http::HeaderName::from_static(MCP_SESSION_ID);

/// The first protocol version of the modern era.
const MODERN: &[u8; 10] = b"2026-07-28";

/// The legacy SSE session parameter of a query string: its value, decoded as servers decode it
/// (percent-escapes, `+` as a space), and where the raw value is in the query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SessionParam<'a> {
    pub(crate) value: Cow<'a, [u8]>,
    pub(crate) raw: Range<usize>,
}

/// The legacy SSE session parameter of a query string, if present, its name matched after
/// decoding (`session%5Fid` is `session_id` to every server); `Err(())` if the query names
/// more than one (a bare name counts: backends differ on which they use, so a request naming
/// two sessions is refused rather than guessed at).
pub(crate) fn sse_session_param(query: &str) -> Result<Option<SessionParam<'_>>, ()> {
    let mut found = None;
    let mut at = 0;
    for pair in query.split('&') {
        let start = at;
        at += pair.len() + 1;
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !is_sse_param_bytes(&path::decode_query(name.as_bytes())) {
            continue;
        }
        if found.is_some() {
            return Err(());
        }
        let value_at = start + (pair.len() - value.len());
        found = Some(SessionParam {
            value: path::decode_query(value.as_bytes()),
            raw: value_at..value_at + value.len(),
        });
    }
    Ok(found)
}

fn is_sse_param_bytes(name: &[u8]) -> bool {
    SSE_PARAMS.iter().any(|p| p.as_bytes() == name)
}

/// A header that may appear once: its first value, and whether another followed.
#[derive(Clone, Copy, Default)]
struct Single<'a> {
    first: Option<&'a [u8]>,
    repeated: bool,
}

impl<'a> Single<'a> {
    fn add(&mut self, value: &'a [u8]) {
        match self.first {
            None => self.first = Some(value),
            Some(_) => self.repeated = true,
        }
    }

    /// The value, if any; `Err(())` if the header appears more than once.
    fn get(self) -> Result<Option<&'a [u8]>, ()> {
        if self.repeated {
            Err(())
        } else {
            Ok(self.first)
        }
    }
}

/// The MCP headers of a request, read in one pass over its headers: a request carries a
/// handful, and comparing each name's length and bytes costs less than hashing the four names
/// (`HeaderMap` hashes a non-standard name byte by byte).
#[derive(Default)]
struct McpHeaders<'a> {
    session: Single<'a>,
    method: Single<'a>,
    name: Single<'a>,
    version: Single<'a>,
}

impl<'a> McpHeaders<'a> {
    fn read(req: &'a Parts) -> Self {
        let mut found = McpHeaders::default();
        for (name, value) in &req.headers {
            let name = name.as_str();
            let single = match name {
                MCP_SESSION_ID => &mut found.session,
                MCP_METHOD => &mut found.method,
                MCP_NAME => &mut found.name,
                MCP_PROTOCOL_VERSION => &mut found.version,
                // A name a backend may read as one of them counts as a second value. (Most
                // names differ in length or first letter: the rest is out of line.)
                _ if matches!(name.len(), 8 | 10 | 14 | 20) && name.starts_with('m') => {
                    if let Some(single) = found.aliased(name) {
                        single.repeated = true;
                    }
                    continue;
                }
                _ => continue,
            };
            single.add(value.as_bytes());
        }
        found
    }

    /// The header `name` may stand for: an MCP header's name with `_` for some of its `-`
    /// (CGI, WSGI and Rack servers read `Mcp_Session_Id` as `Mcp-Session-Id`: the router
    /// must not route by one id while the backend reads another).
    #[cold]
    #[inline(never)]
    fn aliased(&mut self, name: &str) -> Option<&mut Single<'a>> {
        if !name.starts_with("mcp") || !name.contains('_') {
            return None;
        }
        let alias = |of: &str| {
            of.len() == name.len()
                && of
                    .bytes()
                    .zip(name.bytes())
                    .all(|(o, n)| o == n || (o == b'-' && n == b'_'))
        };
        if alias(MCP_SESSION_ID) {
            Some(&mut self.session)
        } else if alias(MCP_METHOD) {
            Some(&mut self.method)
        } else if alias(MCP_NAME) {
            Some(&mut self.name)
        } else if alias(MCP_PROTOCOL_VERSION) {
            Some(&mut self.version)
        } else {
            None
        }
    }
}

/// Whether `MCP-Protocol-Version` names the modern era (a date on or after 2026-07-28);
/// absent or older versions are legacy. A value that is not a date (`YYYY-MM-DD`, month
/// 01–12, day 01–31) is refused: which era it means cannot be told.
pub(crate) fn is_modern(version: Option<&[u8]>) -> Result<bool, BadEra> {
    let Some(v) = version else {
        return Ok(false);
    };
    let digits = |range: std::ops::Range<usize>| {
        v[range].iter().try_fold(0u32, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    let valid = v.len() == 10
        && v[4] == b'-'
        && v[7] == b'-'
        && digits(0..4).is_some()
        && digits(5..7).is_some_and(|m| (1..=12).contains(&m))
        && digits(8..10).is_some_and(|d| (1..=31).contains(&d));
    if !valid {
        return Err(BadEra::InvalidProtocolVersion);
    }
    Ok(v >= &MODERN[..])
}

/// Classifies a request head.
///
/// Legacy session keys are read whatever the path: a request that carries one is either
/// routed by it or checked against it (see [`Carried`]). Paths are compared as a generous
/// backend would read them ([`path::normalize`]).
pub(crate) fn classify<'a>(req: &'a Parts, paths: &Paths) -> Result<Classified<'a>, Reason> {
    let headers = McpHeaders::read(req);
    let session = headers
        .session
        .get()
        .map_err(|()| Reason::AmbiguousKey(KeyKind::Session))?;
    let sse = match req.uri.query() {
        Some(query) => sse_session_param(query)
            .map_err(|()| Reason::AmbiguousKey(KeyKind::SseSession))?
            .map(|param| param.value),
        None => None,
    };
    // A task is named by `Mcp-Name` on a `tasks/*` call, whatever the era or path claims.
    let method = headers
        .method
        .get()
        .map_err(|()| Reason::BadEra(BadEra::AmbiguousMethod))?;
    let task = match method {
        Some(b"tasks/get" | b"tasks/update" | b"tasks/cancel") => headers
            .name
            .get()
            .map_err(|()| Reason::AmbiguousKey(KeyKind::Task))?,
        _ => None,
    };
    let path = path::normalize(req.uri.path());
    let mut class = Classified {
        intent: Intent::Stateless,
        key: None,
        carried: Carried { session, sse, task },
    };

    // Legacy HTTP+SSE: the SSE path (GET connects; Go also POSTs there with `sessionid`) and
    // the message paths (one that ends with `/` is a mount: the Python SDK serves every path
    // under `/messages/`).
    if let Some(sse_path) = &paths.sse {
        let on_sse = path::matches(&path, sse_path);
        let on_messages = paths
            .messages
            .iter()
            .any(|p| path::matches(&path, p) || (p.ends_with('/') && path::is_under(&path, p)));
        if on_sse || on_messages {
            match class.carried.sse.take() {
                Some(id) => {
                    class.intent = Intent::SseMessage;
                    class.key = Some((KeyKind::SseSession, id));
                    return Ok(class);
                }
                None if on_sse && req.method == Method::GET => {
                    class.intent = Intent::SseConnect;
                    return Ok(class);
                }
                None if on_messages => return Err(Reason::BadEra(BadEra::MissingSseSession)),
                None => {}
            }
        }
    }

    // Paths that are not MCP endpoints are routed statelessly: OAuth discovery and the like
    // must neither pin nor forget a session (the keys they carry are still checked).
    let endpoint = match &paths.mcp {
        Some(mcp) => mcp.iter().any(|p| path::matches(&path, p)),
        None => !path::is_under(&path, "/.well-known/"),
    };
    if !endpoint {
        return Ok(class);
    }

    let version = headers
        .version
        .get()
        .map_err(|()| Reason::BadEra(BadEra::AmbiguousProtocolVersion))?;
    if is_modern(version).map_err(Reason::BadEra)? {
        let method = method.unwrap_or_default();
        if matches!(method, b"tasks/get" | b"tasks/update" | b"tasks/cancel") {
            // A missing Mcp-Name is an empty (invalid) key.
            class.intent = Intent::TaskRequest;
            let name = class.carried.task.take().unwrap_or_default();
            class.key = Some((KeyKind::Task, Cow::Borrowed(name)));
            return Ok(class);
        }
        let may_create_task = req.method == Method::POST
            && paths.task_creating.iter().any(|m| m.as_bytes() == method);
        class.intent = Intent::ModernCall { may_create_task };
        return Ok(class);
    }

    let Some(session) = class.carried.session.take() else {
        if req.method == Method::POST {
            class.intent = Intent::SessionStart {
                versioned: version.is_some(),
            };
        }
        return Ok(class);
    };
    class.intent = match req.method {
        Method::GET => Intent::SessionStream,
        Method::DELETE => Intent::SessionDelete,
        _ => Intent::SessionPost,
    };
    class.key = Some((KeyKind::Session, Cow::Borrowed(session)));
    Ok(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(query: &str) -> Result<Option<Vec<u8>>, ()> {
        sse_session_param(query).map(|p| p.map(|p| p.value.into_owned()))
    }

    #[test]
    fn sse_session_params_of_every_sdk_are_found() {
        assert_eq!(value("sessionId=a1"), Ok(Some(b"a1".to_vec())));
        assert_eq!(value("x=1&session_id=b2"), Ok(Some(b"b2".to_vec())));
        assert_eq!(value("sessionid=c3&x=1"), Ok(Some(b"c3".to_vec())));
        assert_eq!(value("SessionId=d4"), Ok(None));
        assert_eq!(value("session=e5"), Ok(None));
        assert_eq!(value("sessionId"), Ok(Some(Vec::new())));
    }

    #[test]
    fn session_params_are_decoded_as_servers_decode_them() {
        assert_eq!(value("session%5Fid=a%2Db+c"), Ok(Some(b"a-b c".to_vec())));
        assert_eq!(value("%73essionid=x"), Ok(Some(b"x".to_vec())));
        let param = sse_session_param("x=1&sessionId=ab%2D&y=2")
            .unwrap()
            .unwrap();
        assert_eq!(param.raw, 14..19);
    }

    #[test]
    fn two_session_params_are_ambiguous_whatever_their_spelling() {
        assert_eq!(value("session_id=a&session_id=b"), Err(()));
        assert_eq!(value("sessionId=a&session_id=a"), Err(()));
        assert_eq!(value("session_id=a&session%5Fid=b"), Err(()));
        assert_eq!(value("sessionId&sessionId=b"), Err(()));
    }

    fn paths() -> Paths {
        Paths {
            sse: Some("/sse".into()),
            messages: vec!["/messages/".into()],
            mcp: None,
            task_creating: Vec::new(),
        }
    }

    fn head(headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::post("/mcp");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn each_mcp_header_is_found_among_others_and_refused_when_repeated() {
        let others = [
            ("accept", "*/*"),
            ("x-mcp-session-id", "x"),
            ("mcp-sessionid", "y"),
        ];
        let with = |extra: &[(&str, &str)]| head(&[&others[..], extra].concat());

        let routed = with(&[
            ("mcp-session-id", "s1"),
            ("mcp-protocol-version", "2025-11-25"),
        ]);
        let class = classify(&routed, &paths()).unwrap();
        assert_eq!(class.intent, Intent::SessionPost);
        assert_eq!(
            class.key,
            Some((KeyKind::Session, Cow::Borrowed(&b"s1"[..])))
        );
        let task = with(&[
            ("mcp-method", "tasks/get"),
            ("mcp-name", "t1"),
            ("mcp-protocol-version", "2026-07-28"),
        ]);
        let class = classify(&task, &paths()).unwrap();
        assert_eq!(class.intent, Intent::TaskRequest);
        assert_eq!(class.key, Some((KeyKind::Task, Cow::Borrowed(&b"t1"[..]))));

        let twice = |name, a, b, also: &[(&str, &str)]| {
            classify(&with(&[&[(name, a), (name, b)], also].concat()), &paths()).err()
        };
        let modern = [("mcp-protocol-version", "2026-07-28")];
        assert_eq!(
            twice("mcp-session-id", "s1", "s1", &[]),
            Some(Reason::AmbiguousKey(KeyKind::Session))
        );
        assert_eq!(
            twice("mcp-method", "tasks/get", "tasks/get", &modern),
            Some(Reason::BadEra(BadEra::AmbiguousMethod))
        );
        let get = [("mcp-method", "tasks/get"), modern[0]];
        assert_eq!(
            twice("mcp-name", "t1", "t2", &get),
            Some(Reason::AmbiguousKey(KeyKind::Task))
        );
        assert_eq!(
            twice("mcp-protocol-version", "2025-11-25", "2025-11-25", &[]),
            Some(Reason::BadEra(BadEra::AmbiguousProtocolVersion))
        );
        // A repeated Mcp-Name off a tasks call routes nothing and is not refused.
        assert_eq!(twice("mcp-name", "t1", "t2", &modern), None);
    }

    #[test]
    fn names_a_backend_may_read_as_mcp_headers_count_as_repeats() {
        let alone = |name, value, also: &[(&str, &str)]| {
            classify(&head(&[&[(name, value)], also].concat()), &paths()).err()
        };
        let session = Some(Reason::AmbiguousKey(KeyKind::Session));
        // Alone (the router would place the request while the backend reads the id), or
        // beside the real header with another id.
        assert_eq!(alone("mcp_session_id", "victim", &[]), session);
        assert_eq!(alone("mcp-session_id", "victim", &[]), session);
        assert_eq!(
            alone("mcp_session-id", "victim", &[("mcp-session-id", "s1")]),
            session
        );
        let modern = [("mcp-protocol-version", "2026-07-28")];
        assert_eq!(
            alone("mcp_method", "tasks/get", &modern),
            Some(Reason::BadEra(BadEra::AmbiguousMethod))
        );
        let get = [("mcp-method", "tasks/get"), modern[0]];
        assert_eq!(
            alone("mcp_name", "t1", &get),
            Some(Reason::AmbiguousKey(KeyKind::Task))
        );
        assert_eq!(
            alone("mcp_protocol_version", "2025-11-25", &[]),
            Some(Reason::BadEra(BadEra::AmbiguousProtocolVersion))
        );
        // Names that no backend reads as an MCP header pass.
        for name in [
            "mcp_session",
            "x-mcp_session_id",
            "mcp_session_idx",
            "mcp-extra_thing",
        ] {
            assert_eq!(alone(name, "v", &[]), None, "{name}");
        }
    }

    #[test]
    fn protocol_versions_split_the_eras_at_2026_07_28() {
        assert_eq!(is_modern(None), Ok(false));
        assert_eq!(is_modern(Some(b"2025-11-25")), Ok(false));
        assert_eq!(is_modern(Some(b"2025-03-26")), Ok(false));
        assert_eq!(is_modern(Some(b"2026-07-27")), Ok(false));
        assert_eq!(is_modern(Some(b"2026-07-28")), Ok(true));
        assert_eq!(is_modern(Some(b"2027-01-01")), Ok(true));
    }

    #[test]
    fn protocol_versions_that_are_not_dates_are_refused() {
        for bad in [
            &b"draft"[..],
            b"9999-99-99",
            b"2026-13-01",
            b"2026-00-10",
            b"2026-07-00",
            b"2026-07-32",
            b"9999-99-9x",
            b"2026-07-28 ",
            b"2026-07-28, 2025-11-25",
            b"",
        ] {
            assert_eq!(
                is_modern(Some(bad)),
                Err(BadEra::InvalidProtocolVersion),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
