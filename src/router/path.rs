//! Request paths as a backend is likely to see them.
//!
//! Backends differ in how they read a path: many percent-decode it, resolve `.` and `..`
//! segments, ignore empty segments and `;` parameters, treat a trailing slash as optional,
//! match case-insensitively (Express does by default), or read `\` as `/` (WHATWG URL parsing:
//! `new URL(req.url, base)`, Deno, Bun, Workers). The router decides whether a request is an
//! MCP endpoint by the most generous of these readings, so that no spelling of an endpoint
//! path slips past the checks a session request gets. Query components are decoded as every
//! SDK's server decodes them: percent-escapes, and `+` as a space.

use std::borrow::Cow;

/// The path with percent-escapes decoded, `\` read as `/`, `;` parameters, empty and `.`
/// segments dropped and `..` segments resolved; a trailing slash is kept. Plain paths (the
/// common case) are returned as they are, without allocating.
pub(crate) fn normalize(raw: &str) -> Cow<'_, [u8]> {
    let bytes = raw.as_bytes();
    if is_plain(bytes) {
        return Cow::Borrowed(bytes);
    }
    Cow::Owned(rebuild(bytes))
}

/// [`normalize`]'s work for a path that is not plain: decoded, split and put back together.
fn rebuild(bytes: &[u8]) -> Vec<u8> {
    let mut decoded = percent_decode(bytes, false);
    for b in &mut decoded {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        let segment = match segment.iter().position(|&b| b == b';') {
            Some(at) => &segment[..at],
            None => segment,
        };
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() || decoded.ends_with(b"/") || ends_with_dot_segment(&decoded) {
        out.push(b'/');
    }
    out
}

/// Whether `path` names `configured`: ASCII case aside, a trailing slash aside.
pub(crate) fn matches(path: &[u8], configured: &str) -> bool {
    trim_slash(path).eq_ignore_ascii_case(trim_slash(configured.as_bytes()))
}

/// Whether `path` is under `prefix` (a directory ending in `/`), ASCII case aside.
pub(crate) fn is_under(path: &[u8], prefix: &str) -> bool {
    path.len() >= prefix.len() && path[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn trim_slash(path: &[u8]) -> &[u8] {
    match path {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        _ => path,
    }
}

/// A path that needs no normalizing: absolute, no escapes, no parameters, no empty or dot
/// segments.
fn is_plain(path: &[u8]) -> bool {
    let [b'/', rest @ ..] = path else {
        return false;
    };
    // One pass: each segment must be non-empty and not a dot segment, but the last may be
    // empty (a trailing slash, or the root).
    let mut start = 0;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'%' | b';' | b'\\' => return false,
            b'/' => {
                if matches!(&rest[start..i], b"" | b"." | b"..") {
                    return false;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    !matches!(&rest[start..], b"." | b"..")
}

fn ends_with_dot_segment(path: &[u8]) -> bool {
    path.ends_with(b"/.") || path.ends_with(b"/..") || path == b"." || path == b".."
}

/// A query component (a parameter's name or value) as servers decode it: percent-escapes, and
/// `+` as a space. Plain components are borrowed.
pub(crate) fn decode_query(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.iter().any(|&b| b == b'%' || b == b'+') {
        Cow::Owned(percent_decode(raw, true))
    } else {
        Cow::Borrowed(raw)
    }
}

/// `value` as a query component: bytes other than `A–Z a–z 0–9 - . _ ~` percent-encoded.
pub(crate) fn encode_query(value: &[u8]) -> Cow<'_, str> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if value.iter().all(|&b| unreserved(b)) {
        return Cow::Borrowed(std::str::from_utf8(value).expect("ASCII"));
    }
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Decodes every `%XX` escape (and `+` as a space in a query); malformed escapes stay as they
/// are.
fn percent_decode(raw: &[u8], query: bool) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if query && raw[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(hi), Some(lo)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        String::from_utf8(normalize(raw).into_owned()).unwrap()
    }

    #[test]
    fn plain_paths_are_borrowed_as_they_are() {
        for path in ["/mcp", "/messages/", "/", "/a/b.c/d"] {
            assert!(matches!(normalize(path), Cow::Borrowed(_)), "{path}");
            assert_eq!(norm(path), path);
        }
    }

    #[test]
    fn a_path_taken_as_plain_is_what_rebuilding_it_gives() {
        // Every path of up to 6 bytes over the bytes that matter to normalizing.
        let alphabet = b"/.a%;\\";
        let mut paths = vec![Vec::new()];
        for _ in 0..6 {
            let longer: Vec<Vec<u8>> = paths
                .iter()
                .filter(|p| p.len() == paths.last().unwrap().len())
                .flat_map(|p| alphabet.iter().map(move |&b| [&p[..], &[b]].concat()))
                .collect();
            paths.extend(longer);
        }
        let mut plain = 0;
        for path in &paths {
            if is_plain(path) {
                plain += 1;
                assert_eq!(rebuild(path), *path, "{:?}", String::from_utf8_lossy(path));
            }
        }
        assert!(plain > 100, "only {plain} plain paths");
    }

    #[test]
    fn every_spelling_of_an_endpoint_normalizes_to_it() {
        for (raw, expected) in [
            ("/.well-known/../mcp", "/mcp"),
            ("/.well-known/%2e%2e/mcp", "/mcp"),
            ("/.well-known/%2E%2E/mcp", "/mcp"),
            ("//mcp", "/mcp"),
            ("/./mcp", "/mcp"),
            ("/mcp;x", "/mcp"),
            ("/mcp/", "/mcp/"),
            ("//messages/", "/messages/"),
            ("/messages;x/", "/messages/"),
            ("/x/../messages/", "/messages/"),
            ("/m%65ssages/", "/messages/"),
            ("/x%2f..%2fmessages/", "/messages/"),
            ("/../../mcp", "/mcp"),
            ("/mcp/.", "/mcp/"),
            ("/mcp/x/..", "/mcp/"),
            ("", "/"),
            ("/%", "/%"),
            ("/%4", "/%4"),
            ("/%zz/mcp", "/%zz/mcp"),
            ("/x\\..\\messages", "/messages"),
            ("/.well-known\\..\\mcp", "/mcp"),
        ] {
            assert_eq!(norm(raw), expected, "{raw}");
        }
    }

    #[test]
    fn query_components_are_decoded_as_servers_decode_them() {
        assert_eq!(&*decode_query(b"session%5Fid"), b"session_id");
        assert_eq!(&*decode_query(b"a+b%2Dc"), b"a b-c");
        assert!(matches!(decode_query(b"plain-id_1"), Cow::Borrowed(_)));
        assert_eq!(encode_query(b"a b&c=d"), "a%20b%26c%3Dd");
        assert!(matches!(encode_query(b"5b7c0f6e-2d41"), Cow::Borrowed(_)));
    }

    #[test]
    fn matching_ignores_case_and_a_trailing_slash() {
        assert!(matches(b"/MCP", "/mcp"));
        assert!(matches(b"/mcp/", "/mcp"));
        assert!(matches(b"/Messages/", "/messages"));
        assert!(matches(b"/messages", "/messages/"));
        assert!(matches(b"/", "/"));
        assert!(!matches(b"/mcpx", "/mcp"));
        assert!(!matches(b"/", "/mcp"));
        assert!(is_under(b"/.Well-Known/oauth", "/.well-known/"));
        assert!(!is_under(b"/.well-known", "/.well-known/"));
    }
}
