//! The changes the router makes to a request or response head, as values: for embedders whose
//! heads are not `http`'s `Parts` and change only through their own methods (pingora's
//! `RequestHeader` and `ResponseHeader`, which keep the case of header names).

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Uri, request, response};

/// The most edits one call makes: a response head gets at most an affinity cookie, a sealed
/// session id twice over (an echo resealed, a minted id sealed) and a `Content-Length` removed;
/// a request head at most one change.
const MAX_EDITS: usize = 4;

/// One change to a head.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadEdit {
    /// Set the header to this value, replacing every value it had.
    Insert(HeaderName, HeaderValue),
    /// Add this value to the header, keeping the values it had.
    Append(HeaderName, HeaderValue),
    /// Remove every value of the header.
    Remove(HeaderName),
    /// Send the request to this URI (path and query) instead (requests only).
    Uri(Uri),
}

/// The changes to make to a head, in order: what
/// [`Router::on_response_head_edits`](super::Router::on_response_head_edits) and
/// [`Exchange::request_edits`](super::Exchange::request_edits) return instead of changing the
/// head themselves.
///
/// Held inline (a handful at most): asking for them allocates nothing. Apply them in the order
/// [`iter`](HeadEdits::iter) gives them; [`apply_to_response`](HeadEdits::apply_to_response)
/// and [`apply_to_request`](HeadEdits::apply_to_request) do it for `http`'s heads.
///
/// ```
/// use http::header::{HeaderMap, HeaderValue};
/// use mcp_affinity::router::{HeadEdit, HeadEdits};
///
/// # fn edits() -> HeadEdits { HeadEdits::default() }
/// let mut headers = HeaderMap::new();
/// for edit in edits() {
///     match edit {
///         HeadEdit::Insert(name, value) => { headers.insert(name, value); }
///         HeadEdit::Append(name, value) => { headers.append(name, value); }
///         HeadEdit::Remove(name) => { headers.remove(name); }
///         // Only a request's edits change its URI.
///         _ => {}
///     }
/// }
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[must_use = "edits change nothing until applied"]
pub struct HeadEdits {
    edits: [Option<HeadEdit>; MAX_EDITS],
}

impl HeadEdits {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.edits[0].is_none()
    }

    /// The edits, in the order to apply them.
    pub fn iter(&self) -> impl Iterator<Item = &HeadEdit> {
        self.edits.iter().map_while(Option::as_ref)
    }

    /// Makes the changes to a response head (a [`HeadEdit::Uri`] has no place there and is
    /// ignored).
    pub fn apply_to_response(self, response: &mut response::Parts) {
        // Most heads need none: nothing to iterate (or to move).
        if self.is_empty() {
            return;
        }
        for edit in self {
            apply_header(edit, &mut response.headers);
        }
    }

    /// Makes the changes to a request head.
    pub fn apply_to_request(self, request: &mut request::Parts) {
        if self.is_empty() {
            return;
        }
        for edit in self {
            match edit {
                HeadEdit::Uri(uri) => request.uri = uri,
                edit => apply_header(edit, &mut request.headers),
            }
        }
    }

    pub(crate) fn push(&mut self, edit: HeadEdit) {
        let slot = self.edits.iter_mut().find(|slot| slot.is_none());
        let slot = slot.expect("no call makes more than MAX_EDITS edits");
        *slot = Some(edit);
    }
}

fn apply_header(edit: HeadEdit, headers: &mut HeaderMap) {
    match edit {
        HeadEdit::Insert(name, value) => {
            headers.insert(name, value);
        }
        HeadEdit::Append(name, value) => {
            headers.append(name, value);
        }
        HeadEdit::Remove(name) => {
            headers.remove(name);
        }
        HeadEdit::Uri(_) => {}
    }
}

impl fmt::Debug for HeadEdits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl IntoIterator for HeadEdits {
    type Item = HeadEdit;
    type IntoIter = HeadEditsIntoIter;

    fn into_iter(self) -> HeadEditsIntoIter {
        HeadEditsIntoIter(self.edits.into_iter())
    }
}

/// The edits of a [`HeadEdits`], by value, in order.
#[derive(Debug)]
pub struct HeadEditsIntoIter(std::array::IntoIter<Option<HeadEdit>, MAX_EDITS>);

impl Iterator for HeadEditsIntoIter {
    type Item = HeadEdit;

    fn next(&mut self) -> Option<HeadEdit> {
        self.0.next().flatten()
    }
}

#[cfg(test)]
mod tests {
    use http::header::{CONTENT_LENGTH, SET_COOKIE};

    use super::*;

    #[test]
    fn edits_apply_in_order_and_a_uri_changes_only_requests() {
        let name = HeaderName::from_static("mcp-session-id");
        let mut edits = HeadEdits::default();
        assert!(edits.is_empty());
        edits.push(HeadEdit::Append(
            SET_COOKIE,
            HeaderValue::from_static("a=1"),
        ));
        edits.push(HeadEdit::Insert(
            name.clone(),
            HeaderValue::from_static("one"),
        ));
        edits.push(HeadEdit::Insert(
            name.clone(),
            HeaderValue::from_static("two"),
        ));
        edits.push(HeadEdit::Remove(CONTENT_LENGTH));
        assert_eq!(edits.iter().count(), 4);

        let (mut response, ()) = http::Response::builder()
            .header(SET_COOKIE, "b=2")
            .header(CONTENT_LENGTH, "7")
            .body(())
            .unwrap()
            .into_parts();
        edits.clone().apply_to_response(&mut response);
        let cookies: Vec<_> = response.headers.get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["b=2", "a=1"]);
        assert_eq!(response.headers[&name], "two");
        assert!(!response.headers.contains_key(CONTENT_LENGTH));

        let mut edits = HeadEdits::default();
        edits.push(HeadEdit::Uri(Uri::from_static("/messages?sessionId=own")));
        let (mut request, ()) = http::Request::post("/messages?sessionId=sealed")
            .body(())
            .unwrap()
            .into_parts();
        edits.clone().apply_to_request(&mut request);
        assert_eq!(request.uri, "/messages?sessionId=own");
        // A response has no URI: the edit is not for it.
        let before = response.headers.clone();
        edits.apply_to_response(&mut response);
        assert_eq!(response.headers, before);
    }
}
