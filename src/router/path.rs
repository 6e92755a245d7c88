//! Request paths as a backend is likely to see them.
//!
//! Backends differ in how they read a path: many percent-decode it, resolve `.` and `..`
//! segments, ignore empty segments and `;` parameters, treat a trailing slash as optional, or
//! match case-insensitively (Express does by default). The router decides whether a request is
//! an MCP endpoint by the most generous of these readings, so that no spelling of an endpoint
//! path slips past the checks a session request gets.

use std::borrow::Cow;

/// The path with percent-escapes decoded, `;` parameters, empty and `.` segments dropped and
/// `..` segments resolved; a trailing slash is kept. Plain paths (the common case) are
/// returned as they are, without allocating.
pub(crate) fn normalize(raw: &str) -> Cow<'_, [u8]> {
    let bytes = raw.as_bytes();
    if is_plain(bytes) {
        return Cow::Borrowed(bytes);
    }
    let decoded = percent_decode(bytes);
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
    Cow::Owned(out)
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
    if path.first() != Some(&b'/') {
        return false;
    }
    if path.iter().any(|&b| b == b'%' || b == b';') {
        return false;
    }
    // Each segment after a '/' must be non-empty (except a final trailing slash) and not a dot
    // segment.
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"" if last => {}
            b"" | b"." | b".." => return false,
            _ => {}
        }
    }
    true
}

fn ends_with_dot_segment(path: &[u8]) -> bool {
    path.ends_with(b"/.") || path.ends_with(b"/..") || path == b"." || path == b".."
}

/// Decodes every `%XX` escape; malformed escapes stay as they are.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
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
        ] {
            assert_eq!(norm(raw), expected, "{raw}");
        }
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
