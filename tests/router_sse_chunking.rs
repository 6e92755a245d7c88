//! Legacy SSE `endpoint` events, learned and sealed, as properties: streams of comments, other
//! fields, `message` events and `endpoint` events in each SDK's spelling (and, in one property,
//! stray bytes), cut into chunks anywhere, fed through `Router::on_response_data`. What the
//! client gets is checked against the stream as the backend sent it, read by the crate's
//! WHATWG parser:
//!
//! - nothing is lost, added or reordered: without sealing the output is the input; with it,
//!   the input with one run of bytes (the session id in the first `endpoint` event's URL)
//!   replaced by a token;
//! - a well-formed first `endpoint` event (one `data:` line, a session parameter in its query)
//!   is always learned, and with sealing always sealed (the backend's id does not reach the
//!   client), whatever the chunking;
//! - the URL the client got, posted back, is pinned to the stream's backend, and the request
//!   the backend gets carries the URL it sent;
//! - a sealing router never holds more than the observation bound.
#![cfg(feature = "seal")]

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::*;
use mcp_affinity::router::{Data, End, Exchange, HeadOutcome, How, Routed, Router, Sealing};
use mcp_affinity::seal::{Keyring, SealKey};
use mcp_affinity::sse::Parser;
use mcp_affinity::{BackendId, TenantId};
use proptest::prelude::*;

/// The observation bound of the routers here: small, so that the bound is hit too.
const BOUND: usize = 2048;

/// A router with two backends, sealing ids or not.
fn router(sealing: bool, now: Instant) -> Router {
    let mut builder = Router::builder().max_observed_bytes(BOUND);
    if sealing {
        let keys = Keyring::new([SealKey::new([7; 32])]).unwrap();
        builder = builder.sealing(Sealing::new(keys, [3; 12], now, 1_795_000_000));
    }
    let router = builder.build();
    for name in ["http://a", "http://b"] {
        router.add_backend(TenantId::DEFAULT, name, 1).unwrap();
    }
    router
}

/// One piece of a stream, written with the stream's line ending.
#[derive(Clone, Debug)]
enum Piece {
    Comment,
    /// A `message` event (its data, a number).
    Message(u16),
    /// A field line without a blank line after it (`id:`, `retry:`).
    Field(bool),
    Endpoint(Endpoint),
    /// Any bytes, from an alphabet that makes field names, line ends and query syntax likely.
    Stray(Vec<u8>),
}

/// An `endpoint` event as the SDKs write it, and the ways they differ.
#[derive(Clone, Debug)]
struct Endpoint {
    /// `session_id` (Python), `sessionId` (TypeScript, older rmcp), `sessionid` (Go).
    param: u8,
    id: String,
    /// An absolute URL, as the TypeScript SDK sends.
    absolute: bool,
    /// Other query parameters before and after the session's.
    before: bool,
    after: bool,
    /// `data:` with no space, one space, or two (the second is part of the value).
    spaces: u8,
    /// The `data:` line before the `event:` line.
    data_first: bool,
}

impl Endpoint {
    fn param(&self) -> &'static str {
        ["session_id", "sessionId", "sessionid"][usize::from(self.param % 3)]
    }

    /// The event's data (what the parser reads: one leading space is dropped) and the id's
    /// offset in it.
    fn url(&self) -> (String, usize) {
        let mut url = String::new();
        if self.spaces == 2 {
            url.push(' ');
        }
        if self.absolute {
            url.push_str("http://127.0.0.1:9001");
        }
        url.push_str("/messages/?");
        if self.before {
            url.push_str("x=1&");
        }
        url.push_str(self.param());
        url.push('=');
        let at = url.len();
        url.push_str(&self.id);
        if self.after {
            url.push_str("&y=2");
        }
        (url, at)
    }
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        any::<u8>(),
        "[A-Za-z0-9-]{1,40}",
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(
            |(param, id, absolute, before, after, spaces, data_first)| Endpoint {
                param,
                id,
                absolute,
                before,
                after,
                spaces,
                data_first,
            },
        )
}

fn piece(stray: bool) -> impl Strategy<Value = Piece> {
    let alphabet =
        prop::sample::select(b"data:event endpoint\r\n?&=_sessionId:/\xef\xbb\xbf".to_vec());
    let stray_weight = if stray { 2 } else { 0 };
    prop_oneof![
        2 => Just(Piece::Comment),
        2 => any::<u16>().prop_map(Piece::Message),
        1 => any::<bool>().prop_map(Piece::Field),
        3 => endpoint().prop_map(Piece::Endpoint),
        stray_weight => prop::collection::vec(alphabet, 1..24).prop_map(Piece::Stray),
    ]
}

/// A stream: its bytes, and where the first `endpoint` event's id is in them (when no stray
/// bytes came before it).
struct Stream {
    bytes: Vec<u8>,
    first_id: Option<std::ops::Range<usize>>,
}

fn write(pieces: &[Piece], eol: &str, bom: bool) -> Stream {
    let mut out = String::new();
    if bom {
        out.push('\u{feff}');
    }
    let mut first_id = None;
    let mut strayed = false;
    let mut bytes = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Comment => out.push_str(&format!(": ping{eol}{eol}")),
            Piece::Message(n) => {
                out.push_str(&format!("event: message{eol}data: {{\"n\":{n}}}{eol}{eol}"))
            }
            Piece::Field(true) => out.push_str(&format!("id: 7{eol}")),
            Piece::Field(false) => out.push_str(&format!("retry: 1000{eol}")),
            Piece::Endpoint(endpoint) => {
                let (url, at) = endpoint.url();
                let event = format!("event: endpoint{eol}");
                let name = if endpoint.spaces == 0 {
                    "data:"
                } else {
                    "data: "
                };
                if !endpoint.data_first {
                    out.push_str(&event);
                }
                out.push_str(name);
                if first_id.is_none() && !strayed {
                    let start = bytes.len() + out.len() + at;
                    first_id = Some(start..start + endpoint.id.len());
                }
                out.push_str(&url);
                out.push_str(eol);
                if endpoint.data_first {
                    out.push_str(&event);
                }
                out.push_str(eol);
            }
            Piece::Stray(stray) => {
                bytes.extend_from_slice(out.as_bytes());
                out.clear();
                bytes.extend_from_slice(stray);
                strayed = true;
            }
        }
    }
    bytes.extend_from_slice(out.as_bytes());
    Stream { bytes, first_id }
}

/// The data of the first `endpoint` event of `bytes`, read by the crate's parser.
fn first_endpoint(bytes: &[u8]) -> Option<String> {
    let mut parser = Parser::new();
    parser.push(Bytes::copy_from_slice(bytes));
    while let Some(event) = parser.next_event() {
        let Ok(event) = event else { continue };
        if event.event_type() == b"endpoint" {
            return Some(String::from_utf8_lossy(&event.data()).into_owned());
        }
    }
    None
}

/// Feeds `bytes` to a new legacy SSE stream of `router`, cut at `cuts`: what the client gets,
/// and the stream's exchange (not ended: a stream's binding lives as long as the stream).
fn feed(
    router: &Router,
    bytes: &[u8],
    cuts: &[usize],
    now: Instant,
) -> Result<(Vec<u8>, Exchange), TestCaseError> {
    let mut stream = forward(router.route(&get("/sse", &[]), now));
    let outcome = router.on_response_head(&mut stream, &mut resp(200, &[SSE]), now);
    // A sealing router holds the stream until its endpoint event; another one only reads it.
    prop_assert!(
        matches!(outcome, HeadOutcome::Rewrite | HeadOutcome::Observe),
        "{outcome:?}"
    );
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    bounds.extend([0, bytes.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    let (mut out, mut held) = (Vec::new(), 0);
    for pair in bounds.windows(2) {
        let chunk = &bytes[pair[0]..pair[1]];
        match router.on_response_data(&mut stream, Bytes::copy_from_slice(chunk), now) {
            Data::Send(sent) => {
                out.extend_from_slice(&sent);
                held = 0;
            }
            Data::Hold => {
                held += chunk.len();
                // Held only while within the bound (the chunk that crosses it is sent).
                prop_assert!(held <= BOUND, "holds {held} bytes");
            }
        }
    }
    if let Some(rest) = router.on_response_data_end(&mut stream) {
        out.extend_from_slice(&rest);
    }
    Ok((out, stream))
}

/// Where `out` differs from `input`: the one run of each that differs, after their common
/// prefix and suffix.
fn difference<'a>(input: &'a [u8], out: &'a [u8]) -> (usize, &'a [u8], &'a [u8]) {
    let prefix = input.iter().zip(out).take_while(|(a, b)| a == b).count();
    let room = input.len().min(out.len()) - prefix;
    let suffix = input
        .iter()
        .rev()
        .zip(out.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    (
        prefix,
        &input[prefix..input.len() - suffix],
        &out[prefix..out.len() - suffix],
    )
}

/// The URL an `endpoint` event's data names, as a request target (absolute URLs to their
/// path and query).
fn target(url: &str) -> String {
    let url = url.trim();
    match url.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
        None => url.to_string(),
    }
}

/// Checks a stream: the client's `endpoint` URL, posted back, is pinned to `owner`, and its
/// backend gets the URL it sent.
fn posts_back(
    router: &Router,
    input: &[u8],
    out: &[u8],
    owner: BackendId,
    now: Instant,
) -> Result<(), TestCaseError> {
    let sealed = first_endpoint(out).expect("the endpoint event is still there");
    let sent = first_endpoint(input).expect("the backend sent one");
    if target(&sealed).parse::<http::uri::PathAndQuery>().is_err() {
        // Stray bytes made a URL no client could request (a space in it).
        return Ok(());
    }
    let mut message = post(&target(&sealed), &[]);
    let exchange = match router.route(&message, now) {
        Routed::Forward(exchange) => exchange,
        other => return Err(TestCaseError::fail(format!("{sealed}: {other:?}"))),
    };
    prop_assert_eq!(exchange.how(), How::Pinned, "{}", sealed);
    prop_assert_eq!(exchange.backend(), owner);
    exchange.rewrite_request(&mut message);
    prop_assert_eq!(message.uri.to_string(), target(&sent));
    router.on_exchange_end(exchange, End::Completed, now);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Streams of well-formed pieces: the first `endpoint` event is always sealed, and only
    /// its id changes.
    #[test]
    fn the_first_endpoint_is_sealed_whatever_the_chunking(
        pieces in prop::collection::vec(piece(false), 1..12),
        eol in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        bom: bool,
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let now = Clock::new().now();
        let router = router(true, now);
        let stream = write(&pieces, eol, bom);
        let (out, exchange) = feed(&router, &stream.bytes, &cuts, now)?;
        let owner = exchange.backend();
        router.on_exchange_end(exchange, End::Completed, now);
        match &stream.first_id {
            // (Past the bound a stream goes on as it came; these streams are most often shorter.)
            Some(id) if stream.bytes.len() <= BOUND => {
                let (at, removed, added) = difference(&stream.bytes, &out);
                prop_assert!(!added.is_empty(), "not sealed: {}", String::from_utf8_lossy(&out));
                // The one run that changed lies within the id (a token may share its first
                // or last characters).
                prop_assert!(at >= id.start && at + removed.len() <= id.end,
                    "changed {at}+{} outside the id at {id:?}", removed.len());
                prop_assert!(added.iter().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(b)));
                posts_back(&router, &stream.bytes, &out, owner, now)?;
            }
            Some(_) => {}
            None => prop_assert_eq!(&out, &stream.bytes, "no endpoint: passed on as it came"),
        }
    }

    /// Streams with stray bytes anywhere: whatever the router makes of them, it loses and adds
    /// nothing but the one id it seals, and what it seals is posted back to the stream's backend.
    #[test]
    fn stray_bytes_are_passed_on_and_a_sealed_id_still_routes(
        pieces in prop::collection::vec(piece(true), 1..16),
        eol in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        bom: bool,
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let now = Clock::new().now();
        let router = router(true, now);
        let stream = write(&pieces, eol, bom);
        let (out, exchange) = feed(&router, &stream.bytes, &cuts, now)?;
        let owner = exchange.backend();
        router.on_exchange_end(exchange, End::Completed, now);
        if out != stream.bytes {
            // (The id may be all of the run that differs, or none of it: a token can begin or
            // end with the id's characters.)
            let (_, _, added) = difference(&stream.bytes, &out);
            prop_assert!(!added.is_empty());
            prop_assert!(added.iter().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(b)));
            posts_back(&router, &stream.bytes, &out, owner, now)?;
        }
    }

    /// Without sealing, the stream passes as it came, chunk for chunk, and the first
    /// `endpoint` event's session is learned whatever the chunking: the URL the client got,
    /// posted back while the stream is open, is pinned to the stream's backend.
    #[test]
    fn the_first_endpoint_is_learned_whatever_the_chunking(
        pieces in prop::collection::vec(piece(false), 1..12),
        eol in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        bom: bool,
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let now = Clock::new().now();
        let router = router(false, now);
        let stream = write(&pieces, eol, bom);
        let (out, exchange) = feed(&router, &stream.bytes, &cuts, now)?;
        prop_assert_eq!(&out, &stream.bytes);
        if stream.first_id.is_some() && stream.bytes.len() <= BOUND {
            posts_back(&router, &stream.bytes, &out, exchange.backend(), now)?;
        }
        router.on_exchange_end(exchange, End::Completed, now);
    }
}
