//! The headers that concern one connection only, which a proxy must not pass on (shared by
//! the proxy and the axum gateway).

use http::header::{self, HeaderMap, HeaderName};

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
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
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
