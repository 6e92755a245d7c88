//! Where the layer sends a request: what the inner service reads from the request's body.

use std::sync::Arc;

use http::uri::{PathAndQuery, Uri};

use crate::BackendId;

/// Where the layer sends a request: what the inner service reads from the request's body,
/// [`ReplayBody::upstream`](super::ReplayBody::upstream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub(super) backend: BackendId,
    pub(super) label: Arc<str>,
    pub(super) pinned: bool,
    pub(super) starts_conversation: bool,
}

impl Upstream {
    /// The backend the router chose.
    pub fn backend(&self) -> BackendId {
        self.backend
    }

    /// Whether a session or task key pins the request to its backend (it is never placed
    /// elsewhere).
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// Whether the request starts a conversation (an `initialize`, a legacy SSE connect).
    ///
    /// With [`is_pinned`](Upstream::is_pinned), it tells a forwarder when a request that
    /// failed *after* it may have been written can still be reported as
    /// [`Undelivered::Refused`](crate::router::Undelivered::Refused), if the backend refuses connections since: a pinned
    /// request's session died with the backend either way, and a conversation start left
    /// nothing that survived. Any other request may have run, and must not be.
    pub fn starts_conversation(&self) -> bool {
        self.starts_conversation
    }

    /// The label the backend was added with (by convention its base URL).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `host:port` of the backend, when the label is a base URL (the scheme's port when the
    /// URL has none): where a health check or a [`RefusalCheck`](super::RefusalCheck) connects.
    pub fn host_port(&self) -> Option<String> {
        let base: Uri = self.label.parse().ok()?;
        let authority = base.authority()?;
        let port = authority.port_u16().or(match base.scheme_str()? {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        })?;
        Some(format!("{}:{port}", authority.host()))
    }

    /// The request's URI on the backend, when the label is a base URL
    /// (`scheme://host[:port][/prefix]`): the label's scheme and authority, its path as a
    /// prefix, then the request's path and query. `None` when the label is not such a URL.
    pub fn uri_for(&self, request: &Uri) -> Option<Uri> {
        let base: Uri = self.label.parse().ok()?;
        let (scheme, authority) = (base.scheme()?.clone(), base.authority()?.clone());
        let prefix = base.path().trim_end_matches('/');
        let path = request.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query: PathAndQuery = if prefix.is_empty() {
            path.parse().ok()?
        } else {
            format!("{prefix}{path}").parse().ok()?
        };
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}
