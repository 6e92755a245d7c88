//! What a hop does to the messages it passes on, shared by the proxy, the axum gateway and the
//! pingora example: the requests it refuses to pass on ([`check_target`], [`check_head`]), and
//! the headers that concern one connection only ([`strip_hop_by_hop`], and for a response
//! [`strip_response_head`]).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, StatusCode, Uri, Version};

/// The hop-by-hop headers (RFC 9110 §7.6.1), and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const HOP_BY_HOP: [HeaderName; 7] = [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ];
    let hop_by_hop = |name: &HeaderName| {
        HOP_BY_HOP.contains(name) || name == "keep-alive" || name == "proxy-connection"
    };
    // Most messages carry none, or only `Transfer-Encoding` (a chunked answer): one pass over
    // the names (cheap compares) finds those present, and only those are removed. Nine
    // slots: there are nine hop-by-hop names, and `keys` gives each name once.
    let mut found: [Option<HeaderName>; 9] = Default::default();
    for (slot, name) in found
        .iter_mut()
        .zip(headers.keys().filter(|n| hop_by_hop(n)))
    {
        *slot = Some(name.clone());
    }
    if found
        .iter()
        .flatten()
        .any(|name| name == header::CONNECTION)
    {
        for name in named_by_connection(headers) {
            headers.remove(name);
        }
    }
    for name in found.into_iter().flatten() {
        if name == header::TRANSFER_ENCODING {
            // The body was decoded by its transfer coding and goes on in this hop's own
            // framing: a `Content-Length` received beside it is wrong, and must go (RFC 9112
            // §6.3). Kept, it would have the client cut the body short, or wait for bytes
            // that never come.
            headers.remove(header::CONTENT_LENGTH);
        }
        headers.remove(name);
    }
}

/// What a response's head must not carry on to the client: its hop-by-hop headers
/// ([`strip_hop_by_hop`]), and the `Content-Length` of an answer that has no body, whatever
/// it says: 1xx and 204 must not carry one (RFC 9110 §8.6), and a 304 may carry the length
/// its 200 would have had, which this hop drops as it may, since the body it passes on is
/// empty and hyper's server (in debug builds) refuses a length its body contradicts.
pub fn strip_response_head(status: StatusCode, headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Whether a message's `Transfer-Encoding` names a coding other than `chunked`: hyper decodes
/// `chunked` only, and a hop that passed such a body on (the header is hop-by-hop) would hand
/// over encoded bytes as plain ones. A request is answered 501 ([`check_head`]); a response,
/// 502.
pub fn other_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The headers the `Connection` header names: they concern this connection only, whatever
/// their names (`Connection: Mcp-Session-Id` makes the session header hop-by-hop).
pub fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

/// What a hop answers itself, sending no backend, and the target's authority put in `Host`:
///
/// - `CONNECT` (405): the hop opens no tunnels;
/// - a target that is not a path (`OPTIONS *`, 400): it would be sent as a path under the
///   backend's prefix;
/// - a path with a dot-segment (`/../admin`; also percent-encoded, or behind an encoded
///   slash or a backslash; 400): a backend that removes them would serve what lies outside
///   its prefix, or another path than the router classified (clients remove them before
///   sending, RFC 3986 §5.2.4);
/// - more than one `Host`, none in an HTTP/1.1 request, or one that is not a `host[:port]`
///   (400, RFC 9112 §3.2: `Host: a/../x` or `Host: a@b` mean one thing here and another to a
///   backend or a log);
/// - a transfer coding other than `chunked` (`Transfer-Encoding: gzip, chunked`; 501, RFC 9112
///   §6.1): the hop decodes `chunked` only, and would pass the body on still encoded, its
///   coding dropped with the header;
/// - an absolute-form target (`POST http://host/mcp`) has its authority put in `Host`, in place
///   of the one received (RFC 9112 §3.2.2).
pub fn check_target<B>(req: &mut Request<B>) -> Result<(), (StatusCode, &'static str)> {
    let host = check_head(req.method(), req.uri(), req.version(), req.headers())?;
    if let Some(host) = host {
        req.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

/// [`check_target`] on a request's parts, for a hop whose request type is not
/// [`http::Request`] (pingora's `RequestHeader`): `Ok(Some(host))` is the `Host` to put in
/// place of the one received (an absolute-form target's authority).
pub fn check_head(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, (StatusCode, &'static str)> {
    if method == Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied\n"));
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err((
            StatusCode::BAD_REQUEST,
            "the request target is not a path\n",
        ));
    }
    if has_dot_segment(path) {
        return Err((StatusCode::BAD_REQUEST, "a dot-segment in the path\n"));
    }
    if other_transfer_coding(headers) {
        return Err((
            StatusCode::NOT_IMPLEMENTED,
            "a transfer coding other than chunked\n",
        ));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err((StatusCode::BAD_REQUEST, "more than one Host\n")),
        (None, None) if version == Version::HTTP_11 => {
            return Err((StatusCode::BAD_REQUEST, "no Host\n"));
        }
        (Some(host), None) if !is_host(host.as_bytes()) => {
            return Err((StatusCode::BAD_REQUEST, "an invalid Host\n"));
        }
        _ => {}
    }
    let Some(authority) = uri.authority() else {
        return Ok(None);
    };
    // Userinfo is an error in an http(s) URI, and a host must not be empty (RFC 9110 §4.2.4):
    // either would make a `Host` that means one thing here and another there.
    if authority.as_str().contains('@') || !is_host_port(authority) {
        return Err((StatusCode::BAD_REQUEST, "an invalid authority\n"));
    }
    HeaderValue::from_str(authority.as_str())
        .map(Some)
        .map_err(|_| (StatusCode::BAD_REQUEST, "an invalid authority\n"))
}

/// Whether `value` is a valid `Host`: `host[:port]` without userinfo, or empty (RFC 9110 §7.2:
/// the Host of a target without an authority).
fn is_host(value: &[u8]) -> bool {
    value.is_empty()
        || (!value.contains(&b'@')
            && Authority::try_from(value).is_ok_and(|authority| is_host_port(&authority)))
}

/// Whether `authority` is a non-empty host and, after a `:`, a port (`http` parses `:80`, `a:`
/// and `a:b` as authorities).
fn is_host_port(authority: &Authority) -> bool {
    let host = authority.host();
    !host.is_empty() && (authority.as_str().len() == host.len() || authority.port_u16().is_some())
}

/// Whether `path` has a `.` or `..` segment as a generous server reads it: `%2e` as `.`,
/// `%2f`, `%5c` and `\` as `/`, and a segment's `;` parameters dropped (servlet containers
/// drop them before resolving the segment: `/..;/`).
fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let decoded = path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%3b", ";")
        .replace('\\', "/")
        .replace("%2f", "/")
        .replace("%5c", "/");
    decoded.split('/').any(|segment| {
        let segment = segment.split(';').next().unwrap_or_default();
        segment == "." || segment == ".."
    })
}
