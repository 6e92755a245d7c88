//! A randomised driver for the tower layer (`tower::AffinityLayer`) against hostile peers: the
//! three crashing backends of `tests/tower_driver.rs`, whose answers are also twisted, with
//! clients that also ask oddly or go away, and operators that change the fleet meanwhile. A
//! plain loop over a seeded RNG.
//!
//! A backend answers, or dies under a request (before its head; after its head, its body
//! failed or ended cleanly; after its body's first frame), or fails a request and lives on (a
//! reset after the request was written, or one before it was); a dead one refuses
//! connections, and its streams fail, until it comes back as a new process (two good probes
//! tell the router). The layer's refusal check answers after up to two pendings. About a
//! third of a live backend's answers are twisted:
//!
//! - `foreign id`: a start answered with a session id the router binds to another backend;
//! - `two ids`: a start answered with two `Mcp-Session-Id` values;
//! - `odd id`: a start answered with an id of 256 bytes (the bound), of 257, or with a byte
//!   0x80, a space or a tab in it;
//! - `no session`: a start answered 200 without a session id;
//! - `status`: a start, legacy connect or task-creating call answered 404, 500 or 202;
//! - `foreign endpoint`: a legacy connect whose endpoint names a legacy session the router
//!   binds to another backend;
//! - `comments`: SSE comments before a legacy stream's endpoint event;
//! - `odd endpoint`: an endpoint event with CRLF line ends, with an absolute URL, with
//!   `data:` and `event:` without a space, or with a comment, an id and more query parameters;
//! - `task shape`: a task result as pretty JSON, as an event after a notification, with
//!   escaped quotes and braces in strings, or typed `Application/JSON; charset=utf-8`;
//! - `echo other`: an answer to a request with a key, naming another session in its head;
//! - `empty frames`: up to 23 empty data frames before the body's first;
//! - `trailers`: trailers after the body;
//! - `split`: the first frame split in three, with an empty frame among them (and the first
//!   two task shapes);
//! - `stalls`: pending (waking itself) before the head and around the first frame;
//! - `removed`, `drained`: the backend removed from the router, or drained, while it answers.
//!
//! Clients start Streamable HTTP conversations, call, listen to (GET) and delete their
//! sessions; open legacy SSE streams, send messages on them, read them and close them; make
//! 2026-07-28 calls that create tasks, and poll the tasks. Hostile ones also send two session
//! headers, a legacy session's or a task's id as a session, a legacy message with a session
//! header too, a call with a legacy query parameter too, and a session's calls after its
//! DELETE. A client may drop the response future after a few polls, or the body after its
//! first frame. Operators add removed backends back, undrain drained ones, report probes (a
//! failed probe of a live backend too) and maintain the router.
//!
//! After every request it checks:
//!
//! - `misroute`: a request with a key (session header, legacy query parameter, task name)
//!   reaches only a backend that minted that key, at most once, and a second backend that
//!   minted it too (a foreign id or endpoint) only once the first's process is gone or
//!   removed; a request with two session headers, or with another era's key as a session,
//!   reaches none (answered 400, and 404);
//! - `start`: a conversation start's answer is the last backend's that took it, alive: its
//!   status, a key that backend minted (another backend's only once that one's process is
//!   gone or removed), its body whole unless the backend died after the first frame, or after
//!   more than 16 empty frames (the read-ahead's bound). Or it is the router's own: 502 for two
//!   session ids (learning neither) or an id it cannot route, 503 for another live backend's
//!   id, 503 when no live, ready backend is left untried. It fails only when the backend that
//!   took it failed it and lives on;
//! - `at-most-once`: a start is placed again exactly when its backend refused it, reset it
//!   before it was written, or died before its answer's first frame (after at most 16 empty
//!   frames); a task-creating call only after a refusal or a reset before it was written;
//! - `task call`: a task-creating call's answer is the last backend's that took it, alive,
//!   with a task that backend minted, its body whole unless the backend died; or the router's
//!   503 when no live, ready backend is left untried. It fails only when the backend that took
//!   it failed it, or died before its head (it may have run the call);
//! - `live`: a request of a session or task minted once, by a process that lives and is still
//!   in the router (and has not deleted it), or a message on a legacy stream its client holds
//!   open, gets that backend's success unless the backend failed it (a reset, written or
//!   not);
//! - `gone`: a request of a key is answered with a success only by a live process that minted
//!   it;
//! - `one id`: no answer reaches a client with two session ids;
//! - at the end of each seed, once every client has gone and the router is maintained: no
//!   legacy session of a backend in the router outlives its streams, and 400 days later no key
//!   is left.
//!
//! It also asserts that the run took every twist and every path of those checks (`PATHS`),
//! and no other. Run more seeds with `TOWER_DRIVER_SEEDS=N` (default 1,000, of 80 steps each).
#![cfg(all(feature = "tower", feature = "tasks"))] // (task ids are learned with `tasks`)
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use mcp_affinity::router::{Probe, Router, Undelivered};
use mcp_affinity::table::{Key, KeyKind, SessionTable};
use mcp_affinity::tower::{AffinityLayer, ReplayBody, Upstream};
use mcp_affinity::{BackendId, TenantId};
use tower_layer::Layer;
use tower_service::Service;

const LABELS: [&str; 3] = ["http://a.test:1", "http://b.test:2", "http://c.test:3"];

/// How many empty data frames the read-ahead of a start's answer passes over (documented in
/// `src/tower/mod.rs`).
const EMPTY_FRAMES_SKIPPED: usize = 16;

/// Every path the run must take: each twist, each hostile request and client, each operator
/// act, and each path of the checks.
const PATHS: &[&str] = &[
    "twist: foreign id",
    "twist: two ids",
    "twist: odd id of 256 bytes",
    "twist: odd id of 257 bytes",
    "twist: odd id with 0x80",
    "twist: odd id with a space",
    "twist: odd id with a tab",
    "twist: no session",
    "twist: status",
    "twist: foreign endpoint",
    "twist: comments",
    "twist: endpoint with CRLF",
    "twist: endpoint with an absolute URL",
    "twist: endpoint without spaces",
    "twist: endpoint with more fields",
    "twist: task as pretty JSON",
    "twist: task after a notification",
    "twist: task with escapes",
    "twist: task with a charset",
    "twist: echo other",
    "twist: empty frames",
    "twist: trailers",
    "twist: split",
    "twist: stalls",
    "twist: removed",
    "twist: drained",
    "client: two session headers, answered 400",
    "client: another era's key, answered 404",
    "client: a message with a session header",
    "client: a call with a legacy parameter",
    "client: drops the response future",
    "client: drops the body",
    "operator: adds a removed backend back",
    "operator: undrains",
    "operator: a failed probe",
    "operator: a refused probe",
    "operator: a good probe",
    "operator: maintains",
    "start: answered",
    "start: placed again after a refusal",
    "start: placed again after a reset before it was written",
    "start: placed again after its backend died before its head",
    "start: placed again after its backend died after its head",
    "start: placed again after its body ended and its backend died",
    "start: placed again after 1 to 16 empty frames",
    "start: past the empty-frame bound, reached the client",
    "start: cut after its first frame, reached the client",
    "start: failed by its live backend",
    "start: two ids, answered 502",
    "start: an unroutable id, answered 502",
    "start: a foreign id, answered 503",
    "start: a gone backend's id, forwarded",
    "start: no backend left, answered 503",
    "task call: placed again after a refusal",
    "task call: placed again after a reset before it was written",
    "task call: answered with a task",
    "live: a session's call answered",
    "live: a legacy message answered",
    "live: a task's poll answered",
    "live: a session's stream opened",
    "live: a session deleted",
    "live: failed by its backend",
    "gone: refused by the router",
];

/// xorshift64*: enough for a driver, and a seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// What a backend does with the request it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Answer,
    /// Dies before its head: the connection is reset.
    DiesBeforeHead,
    /// Sends its head and dies before the body's first frame; the body fails.
    DiesAfterHead,
    /// Sends its head and dies before the body's first frame; the body ends cleanly.
    EndsAndDiesAfterHead,
    /// Sends its head and the first frame, then dies.
    DiesAfterFrame,
    /// Fails the request (a reset after it was written) and lives on.
    Fails,
    /// Resets the connection before the request was written, and lives on.
    ResetsUnwritten,
}

/// How a live backend twists its answer (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Twist {
    None,
    /// Another backend's session (the id, that backend).
    ForeignId(String, usize),
    /// Both minted by the backend.
    TwoIds(String, String),
    /// 0: 256 bytes; 1: 257 bytes; 2: 0x80; 3: a space; 4: a tab.
    OddId(usize),
    NoSession,
    Status(u16),
    /// Another backend's legacy session (the id, that backend).
    ForeignEndpoint(String, usize),
    Comments(usize),
    /// 0: CRLF; 1: an absolute URL; 2: no spaces; 3: more fields and parameters.
    OddEndpoint(usize),
    /// 0: pretty JSON; 1: after a notification; 2: escapes; 3: a charset.
    TaskShape(usize),
    EchoOther(String),
    EmptyFrames(usize),
    Trailers,
    Split,
    Stalls,
    Removed,
    Drained,
}

impl Twist {
    fn name(&self) -> &'static str {
        match self {
            Twist::None => "twist: none",
            Twist::ForeignId(..) => "twist: foreign id",
            Twist::TwoIds(..) => "twist: two ids",
            Twist::OddId(how) => [
                "twist: odd id of 256 bytes",
                "twist: odd id of 257 bytes",
                "twist: odd id with 0x80",
                "twist: odd id with a space",
                "twist: odd id with a tab",
            ][*how],
            Twist::NoSession => "twist: no session",
            Twist::Status(_) => "twist: status",
            Twist::ForeignEndpoint(..) => "twist: foreign endpoint",
            Twist::Comments(_) => "twist: comments",
            Twist::OddEndpoint(how) => [
                "twist: endpoint with CRLF",
                "twist: endpoint with an absolute URL",
                "twist: endpoint without spaces",
                "twist: endpoint with more fields",
            ][*how],
            Twist::TaskShape(how) => [
                "twist: task as pretty JSON",
                "twist: task after a notification",
                "twist: task with escapes",
                "twist: task with a charset",
            ][*how],
            Twist::EchoOther(_) => "twist: echo other",
            Twist::EmptyFrames(_) => "twist: empty frames",
            Twist::Trailers => "twist: trailers",
            Twist::Split => "twist: split",
            Twist::Stalls => "twist: stalls",
            Twist::Removed => "twist: removed",
            Twist::Drained => "twist: drained",
        }
    }

    /// An odd id the router cannot route by (all but the one of 256 bytes).
    fn unroutable(&self) -> bool {
        matches!(self, Twist::OddId(how) if *how > 0)
    }

    /// More empty frames before the first than the read-ahead passes over.
    fn past_empty_bound(&self) -> bool {
        matches!(self, Twist::EmptyFrames(n) if *n > EMPTY_FRAMES_SKIPPED)
    }
}

/// What the backend was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Asked {
    /// A Streamable HTTP conversation start.
    Start,
    /// A legacy SSE connect.
    Connect,
    /// A 2026-07-28 call that creates a task.
    TaskCall,
    /// A request with a key (session, legacy session, task).
    Keyed(String),
}

/// A request the service was given.
#[derive(Clone, Debug)]
struct Delivery {
    backend: usize,
    request: u64,
    asked: Asked,
    act: Act,
    /// Whether the backend was alive when it got the request.
    alive: bool,
    twist: Twist,
}

impl Delivery {
    /// Whether a start is placed again after this delivery: nothing of its answer can have
    /// reached anyone.
    fn start_placed_again(&self) -> bool {
        !self.alive
            || match self.act {
                Act::DiesBeforeHead | Act::ResetsUnwritten => true,
                Act::DiesAfterHead | Act::EndsAndDiesAfterHead => !self.twist.past_empty_bound(),
                Act::Answer | Act::DiesAfterFrame | Act::Fails => false,
            }
    }
}

/// A backend process, and its place in the router.
#[derive(Debug)]
struct Backend {
    id: BackendId,
    alive: bool,
    /// Its process: a new one each time it comes back.
    process: u32,
    /// Times it was removed from the router.
    removals: u32,
    removed: bool,
    draining: bool,
}

/// Who minted a key: a backend, its process, and how many times the router had removed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Minter {
    backend: usize,
    process: u32,
    removals: u32,
}

/// The backends' world, shared by the service and the driver.
struct World {
    rng: Rng,
    backends: [Backend; 3],
    /// Keys minted: id → who minted it, the first one first (a foreign id or endpoint is
    /// minted again by another backend).
    minted: HashMap<String, Vec<Minter>>,
    minted_count: u64,
    /// Sessions their backend deleted, and the request that deleted each.
    deleted: HashMap<String, u64>,
    deliveries: Vec<Delivery>,
}

impl World {
    fn minter(&self, backend: usize) -> Minter {
        let b = &self.backends[backend];
        Minter {
            backend,
            process: b.process,
            removals: b.removals,
        }
    }

    fn mint(&mut self, backend: usize) -> String {
        self.minted_count += 1;
        let minter = self.minter(backend);
        let id = format!("{backend}-{}-{}", minter.process, self.minted_count);
        self.minted.insert(id.clone(), vec![minter]);
        id
    }

    /// Whether `backend`'s process now minted `key`.
    fn holds(&self, key: &str, backend: usize) -> bool {
        let process = self.backends[backend].process;
        self.minted[key]
            .iter()
            .any(|m| m.backend == backend && m.process == process)
    }

    /// Whether `minter`'s process lives, and the router has not removed its backend since.
    fn lives(&self, minter: Minter) -> bool {
        let b = &self.backends[minter.backend];
        b.alive && b.process == minter.process && b.removals == minter.removals
    }

    /// Whether the process of `backend` that last minted `key` is gone, or removed since.
    fn gone(&self, key: &str, backend: usize) -> bool {
        let minter = self.minted[key].iter().rev().find(|m| m.backend == backend);
        !self.lives(*minter.expect("minted by that backend"))
    }
}

#[derive(Debug)]
enum Failure {
    /// Nothing listens: the connection was refused.
    Refused,
    /// The connection was reset: the request may have been written.
    Reset,
    /// The connection was reset before the request was written.
    NotWritten,
}

fn classify(failure: &Failure) -> Option<Undelivered> {
    match failure {
        Failure::Refused => Some(Undelivered::Refused),
        Failure::NotWritten => Some(Undelivered::Failed),
        Failure::Reset => None,
    }
}

/// A piece of a response body.
enum Piece {
    Data(Bytes),
    Trailers,
    /// Pending once (waking itself).
    Stall,
}

/// A response body: its pieces, then, for a stream (a legacy one, a session's GET), nothing
/// more for as long as its backend's process lives (an error once it is gone), else an error
/// or the end.
struct Frames {
    pieces: VecDeque<Piece>,
    fails: bool,
    open: Option<(Arc<Mutex<World>>, usize, u32)>,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        match self.pieces.pop_front() {
            Some(Piece::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Piece::Trailers) => {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-trailer", HeaderValue::from_static("1"));
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            Some(Piece::Stall) => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None => {}
        }
        if let Some((world, backend, process)) = &self.open {
            let b = &world.lock().unwrap().backends[*backend];
            if b.alive && b.process == *process {
                // (Polled again by hand, never woken.)
                return Poll::Pending;
            }
        }
        if self.open.take().is_some() {
            self.fails = true;
        }
        Poll::Ready(std::mem::take(&mut self.fails).then_some(Err(Failure::Reset)))
    }
}

/// Pending `n` times (waking itself), then the value.
struct Delay<T> {
    n: u32,
    value: Option<T>,
}

impl<T> Delay<T> {
    fn new(n: u32, value: T) -> Self {
        Delay {
            n,
            value: Some(value),
        }
    }
}

impl<T: Unpin> Future for Delay<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if self.n > 0 {
            self.n -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.value.take().expect("polled after it was ready"))
    }
}

/// The forwarding service: plays the backend the layer names.
#[derive(Clone)]
struct Backends(Arc<Mutex<World>>, Arc<Router>);

fn backend_of(upstream: &Upstream) -> usize {
    LABELS.iter().position(|l| *l == upstream.label()).unwrap()
}

/// The key a backend reads: on a message path its query parameter, else the session header,
/// or a task poll's `Mcp-Name`.
fn key_of<B>(request: &Request<B>) -> Option<String> {
    let header = |name: &str| {
        let value = request.headers().get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    if request.uri().path() == "/messages/" {
        let query = request.uri().query()?;
        let id = query.split('&').find_map(|p| p.strip_prefix("session_id="));
        return id.map(str::to_string);
    }
    let task = header("mcp-name").filter(|_| header("mcp-method").as_deref() == Some("tasks/get"));
    header("mcp-session-id").or(task)
}

/// Keys of `kind` the router binds to a backend other than `backend`, and that backend.
fn bound_elsewhere(
    world: &World,
    router: &Router,
    backend: usize,
    kind: KeyKind,
) -> Vec<(String, usize)> {
    let mut keys = Vec::new();
    for (b, other) in world.backends.iter().enumerate() {
        if b == backend || other.removed {
            continue;
        }
        for key in router.keys_of(other.id, 1000) {
            if key.kind() == kind && world.minted.contains_key(key.id()) {
                keys.push((key.id().to_string(), b));
            }
        }
    }
    keys.sort();
    keys
}

/// A twist for a live backend's answer to `asked`.
fn draw_twist(world: &mut World, router: &Router, backend: usize, asked: &Asked) -> Twist {
    let foreign = |world: &mut World, kind| {
        let keys = bound_elsewhere(world, router, backend, kind);
        (!keys.is_empty()).then(|| world.rng.pick(&keys))
    };
    let status = |world: &mut World| Twist::Status(world.rng.pick(&[404, 500, 202]));
    match world.rng.below(9) {
        0..=3 => match asked {
            Asked::Start => match world.rng.below(5) {
                0 => foreign(world, KeyKind::Session)
                    .map_or(Twist::None, |(id, b)| Twist::ForeignId(id, b)),
                1 => Twist::TwoIds(world.mint(backend), world.mint(backend)),
                2 => Twist::OddId(world.rng.below(5)),
                3 => Twist::NoSession,
                _ => status(world),
            },
            Asked::Connect => match world.rng.below(4) {
                0 => foreign(world, KeyKind::SseSession)
                    .map_or(Twist::None, |(id, b)| Twist::ForeignEndpoint(id, b)),
                1 => Twist::Comments(1 + world.rng.below(4)),
                2 => Twist::OddEndpoint(world.rng.below(4)),
                _ => status(world),
            },
            Asked::TaskCall => match world.rng.below(2) {
                0 => Twist::TaskShape(world.rng.below(4)),
                _ => status(world),
            },
            Asked::Keyed(_) => {
                foreign(world, KeyKind::Session).map_or(Twist::None, |(id, _)| Twist::EchoOther(id))
            }
        },
        4 => Twist::EmptyFrames(world.rng.below(24)),
        5 => Twist::Trailers,
        6 => Twist::Split,
        7 => Twist::Stalls,
        _ if world.rng.below(2) == 0 => Twist::Removed,
        _ => Twist::Drained,
    }
}

/// The session ids a backend answers a start with (`id` is the one it minted).
fn start_ids(world: &mut World, backend: usize, twist: &Twist, id: String) -> Vec<HeaderValue> {
    let minter = world.minter(backend);
    let ids = match twist {
        Twist::ForeignId(other, _) => {
            world.minted.get_mut(other).unwrap().push(minter);
            vec![other.clone()]
        }
        Twist::TwoIds(a, b) => vec![a.clone(), b.clone()],
        Twist::OddId(how) => {
            let mut odd = id.into_bytes();
            match how {
                0 => odd.resize(Key::DEFAULT_MAX_LEN, b'x'),
                1 => odd.resize(Key::DEFAULT_MAX_LEN + 1, b'x'),
                2 => odd.extend(b"\x80"),
                3 => odd.extend(b" x"),
                _ => odd.extend(b"\tx"),
            }
            if *how == 0 {
                // Routable: its client may call it.
                world
                    .minted
                    .insert(String::from_utf8(odd.clone()).unwrap(), vec![minter]);
            }
            return vec![HeaderValue::from_bytes(&odd).unwrap()];
        }
        Twist::NoSession => vec![],
        _ => vec![id],
    };
    ids.iter()
        .map(|id| HeaderValue::from_str(id).unwrap())
        .collect()
}

/// A legacy stream's endpoint event, naming `id`.
fn endpoint(twist: &Twist, id: &str, backend: usize) -> String {
    match twist {
        Twist::OddEndpoint(0) => {
            format!("event: endpoint\r\ndata: /messages/?session_id={id}\r\n\r\n")
        }
        Twist::OddEndpoint(1) => format!(
            "event: endpoint\ndata: {}/messages/?session_id={id}\n\n",
            LABELS[backend]
        ),
        Twist::OddEndpoint(2) => format!("event:endpoint\ndata:/messages/?session_id={id}\n\n"),
        Twist::OddEndpoint(_) => {
            format!(": hi\nevent: endpoint\nid: 1\ndata: /messages/?x=1&session_id={id}&y=2\n\n")
        }
        _ => format!("event: endpoint\ndata: /messages/?session_id={id}\n\n"),
    }
}

/// A task-creating call's answer: its content type and body.
fn task_result(twist: &Twist, id: &str) -> (&'static str, String) {
    let json = "application/json";
    match twist {
        Twist::TaskShape(0) => (
            json,
            format!(
                "\n  {{\n  \"jsonrpc\" : \"2.0\",\n  \"id\" : 1,\n  \"result\" : {{ \"resultType\" : \
                 \"task\",\n \"taskId\":\"{id}\", \"status\": \"working\" }} }}\n"
            ),
        ),
        Twist::TaskShape(1) => (
            "text/event-stream",
            format!(
                "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\
                 \"params\":{{\"x\":\"}}\"}}}}\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":1,\
                 \"result\":{{\"resultType\":\"task\",\"taskId\":\"{id}\",\"status\":\"working\"}}}}\n\n"
            ),
        ),
        Twist::TaskShape(2) => (
            json,
            format!(
                r#"{{"note":"}}{{\"","jsonrpc":"2.0","id":"x","result":{{"resultType":"task","taskId":"{id}","status":"working","meta":{{"a":[1,{{"b":"]"}}]}}}}}}"#
            ),
        ),
        _ => (
            match twist {
                Twist::TaskShape(3) => "Application/JSON; charset=utf-8",
                _ => json,
            },
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"resultType":"task","taskId":"{id}","status":"working"}}}}"#
            ),
        ),
    }
}

/// A response body's pieces, and whether it fails after them.
fn pieces(first: Bytes, twist: &Twist, act: Act) -> (Vec<Piece>, bool) {
    let mut pieces = Vec::new();
    if let Twist::EmptyFrames(n) = twist {
        pieces.extend((0..*n).map(|_| Piece::Data(Bytes::new())));
    }
    let with_first = |pieces: &mut Vec<Piece>| match twist {
        Twist::Split | Twist::TaskShape(0 | 1) => {
            let (a, b) = (first.len() / 3, 2 * first.len() / 3);
            pieces.push(Piece::Data(first.slice(..a)));
            pieces.push(Piece::Data(Bytes::new()));
            pieces.push(Piece::Data(first.slice(a..b)));
            pieces.push(Piece::Data(first.slice(b..)));
        }
        Twist::Comments(n) => {
            pieces.extend((0..*n).map(|_| Piece::Data(Bytes::from_static(b": keepalive\n\n"))));
            pieces.push(Piece::Data(first.clone()));
        }
        Twist::Stalls => {
            pieces.push(Piece::Stall);
            pieces.push(Piece::Data(first.clone()));
            pieces.push(Piece::Stall);
        }
        _ => pieces.push(Piece::Data(first.clone())),
    };
    let fails = match act {
        Act::Answer => {
            with_first(&mut pieces);
            if *twist == Twist::Trailers {
                pieces.push(Piece::Trailers);
            }
            false
        }
        Act::DiesAfterFrame => {
            with_first(&mut pieces);
            true
        }
        Act::DiesAfterHead => true,
        _ => false,
    };
    (pieces, fails)
}

impl Service<Request<ReplayBody<Full<Bytes>>>> for Backends {
    type Response = Response<Frames>;
    type Error = Failure;
    type Future = Delay<Result<Response<Frames>, Failure>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        let Backends(shared, router) = self;
        let backend = backend_of(request.body().upstream().unwrap());
        let number: u64 = request.headers()["x-request"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let path = request.uri().path();
        let asked = match key_of(&request) {
            Some(key) => Asked::Keyed(key),
            None if path == "/sse" => Asked::Connect,
            None if request.headers().contains_key("mcp-method") => Asked::TaskCall,
            None => Asked::Start,
        };
        let mut world = shared.lock().unwrap();
        let alive = world.backends[backend].alive;
        let act = match world.rng.below(24) {
            0 => Act::DiesBeforeHead,
            1 => Act::DiesAfterHead,
            2 => Act::EndsAndDiesAfterHead,
            3 => Act::DiesAfterFrame,
            4 => Act::Fails,
            5 => Act::ResetsUnwritten,
            _ => Act::Answer,
        };
        let twist = if alive && world.rng.below(3) == 0 {
            draw_twist(&mut world, router, backend, &asked)
        } else {
            Twist::None
        };
        world.deliveries.push(Delivery {
            backend,
            request: number,
            asked: asked.clone(),
            act,
            alive,
            twist: twist.clone(),
        });
        let stalls = if twist == Twist::Stalls { 2 } else { 0 };
        if !alive {
            return Delay::new(stalls, Err(Failure::Refused));
        }
        if act == Act::ResetsUnwritten {
            return Delay::new(stalls, Err(Failure::NotWritten));
        }
        let mut head = Response::builder();
        let mut content_type = "text/event-stream";
        let mut first = String::from("event: message\ndata: {\"result\":{}}\n\n");
        let mut status = StatusCode::OK;
        match &asked {
            Asked::Start => {
                let id = world.mint(backend);
                for id in start_ids(&mut world, backend, &twist, id) {
                    head = head.header("mcp-session-id", id);
                }
            }
            Asked::Connect => {
                let mut id = world.mint(backend);
                if let Twist::ForeignEndpoint(other, _) = &twist {
                    let minter = world.minter(backend);
                    world.minted.get_mut(other).unwrap().push(minter);
                    id = other.clone();
                }
                first = endpoint(&twist, &id, backend);
            }
            Asked::TaskCall => (content_type, first) = task_result(&twist, &world.mint(backend)),
            Asked::Keyed(key) => {
                status = if !world.holds(key, backend) || world.deleted.contains_key(key) {
                    // The backend's own answer to a key it does not hold.
                    StatusCode::NOT_FOUND
                } else if path == "/messages/" {
                    // A legacy message is answered on its stream.
                    StatusCode::ACCEPTED
                } else {
                    if request.method() == Method::DELETE {
                        world.deleted.entry(key.clone()).or_insert(number);
                    }
                    StatusCode::OK
                };
                if let Twist::EchoOther(other) = &twist {
                    head = head.header("mcp-session-id", other);
                }
            }
        }
        if let Twist::Status(s) = twist {
            status = StatusCode::from_u16(s).unwrap();
        }
        // The fleet changes while the backend answers.
        let b = &mut world.backends[backend];
        match twist {
            Twist::Removed if !b.removed => {
                router.remove_backend(b.id, Instant::now()).unwrap();
                b.removed = true;
                b.removals += 1;
            }
            Twist::Drained if !b.removed => {
                router.drain_backend(b.id, None, Instant::now()).unwrap();
                b.draining = true;
            }
            _ => {}
        }
        b.alive &= matches!(act, Act::Answer | Act::Fails);
        if matches!(act, Act::DiesBeforeHead | Act::Fails) {
            return Delay::new(stalls, Err(Failure::Reset));
        }
        let (pieces, fails) = pieces(Bytes::from(first), &twist, act);
        let stream = asked == Asked::Connect || request.method() == Method::GET;
        let process = world.backends[backend].process;
        let open = (stream && status.is_success() && act == Act::Answer)
            .then(|| (shared.clone(), backend, process));
        let body = Frames {
            pieces: pieces.into(),
            fails,
            open,
        };
        let response = head
            .status(status)
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        Delay::new(stalls, Ok(response))
    }
}

/// A client's request.
#[derive(Clone, Debug)]
enum Ask {
    /// An `initialize`; a Streamable HTTP session's call, its GET stream and its DELETE.
    Start,
    Call(String),
    Listen(String),
    Delete(String),
    /// A legacy SSE connect, and a message of its session.
    Connect,
    Message(String),
    /// A 2026-07-28 `tools/call` answered with a task, and a `tasks/get` of that task.
    Tool,
    Poll(String),
    /// Two session headers.
    TwoSessions(String, String),
    /// A legacy session's or a task's id as a session.
    OtherEra(String),
    /// A legacy message (its session) with a session header too.
    MessageWithSession(String, String),
    /// A call (its session) with a legacy query parameter too.
    CallWithParameter(String, String),
}

/// How a client's request ended.
#[derive(Debug)]
enum Answered {
    /// The router's own answer (a rejection): no backend's.
    Local(StatusCode),
    /// A backend's: its status, the session id in its head, the key in its body (a legacy
    /// endpoint's session, a task), whether the whole body came (an open stream: what it has).
    Backend {
        status: StatusCode,
        session: Option<String>,
        key: Option<String>,
        whole: bool,
    },
    /// The service's error.
    Failed,
    /// The client went away before the head, or after the body's first frame.
    Dropped,
}

/// A response body as the client holds it.
type ClientBody = UnsyncBoxBody<Bytes, Failure>;

/// Reads what `body` has now (polled by hand: a stream stays open); whether it failed.
fn drain(body: &mut ClientBody, into: &mut Vec<u8>) -> Result<(), Failure> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut pendings = 0;
    loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                pendings = 0;
                if let Ok(data) = frame.into_data() {
                    into.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(failure))) => return Err(failure),
            // (A stall wakes itself; an open stream stays pending.)
            Poll::Pending if pendings < 4 => pendings += 1,
            Poll::Ready(None) | Poll::Pending => return Ok(()),
        }
    }
}

/// The key in a body: a legacy endpoint's session, or a task's id.
fn key_in(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    if let Some((_, rest)) = text.split_once("session_id=") {
        let end = rest.find(['\r', '\n', '&']).unwrap_or(rest.len());
        return Some(rest[..end].to_string());
    }
    let (_, rest) = text.split_once(r#""taskId":"#)?;
    let rest = rest.trim_start().strip_prefix('"')?;
    Some(rest.split_once('"')?.0.to_string())
}

/// A stream a client holds open.
struct Stream {
    id: String,
    body: ClientBody,
    /// Its body failed (its backend died).
    cut: bool,
}

/// How often each path was taken, over all seeds.
#[derive(Debug, Default)]
struct Paths(BTreeMap<&'static str, u64>);

impl Paths {
    fn saw(&mut self, path: &'static str) {
        *self.0.entry(path).or_default() += 1;
    }
}

/// What a failed check prints: where, what was asked and answered, and what the service
/// was given.
struct At<'a> {
    seed: u64,
    step: usize,
    ask: &'a Ask,
    answered: &'a Answered,
    world: &'a World,
    router: &'a Router,
    /// The request's number.
    number: u64,
    /// The request's deliveries begin here.
    from: usize,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let health: Vec<String> = self
            .router
            .backends()
            .iter()
            .map(|b| format!("{}: {:?}/{}", b.label, b.health, b.ready()))
            .collect();
        let all = &self.world.deliveries;
        write!(
            f,
            "seed {} step {}: {:?} answered {:?}; delivered: {:?} (before: {:?}); router: \
             {health:?}; backends: {:?}",
            self.seed,
            self.step,
            self.ask,
            self.answered,
            &all[self.from..],
            &all[self.from.saturating_sub(6)..self.from],
            self.world.backends,
        )
    }
}

fn run(seed: u64, steps: usize, paths: &mut Paths) {
    let router = Arc::new(Router::builder().build());
    let ids: Vec<BackendId> = LABELS
        .iter()
        .map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap())
        .collect();
    let world = Arc::new(Mutex::new(World {
        rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        backends: [0, 1, 2].map(|b| Backend {
            id: ids[b],
            alive: true,
            process: 0,
            removals: 0,
            removed: false,
            draining: false,
        }),
        minted: HashMap::new(),
        minted_count: 0,
        deleted: HashMap::new(),
        deliveries: Vec::new(),
    }));
    // Whether the backend is dead, after up to two pendings.
    let refuses = {
        let world = world.clone();
        move |upstream: &Upstream| {
            let mut w = world.lock().unwrap();
            let dead = !w.backends[backend_of(upstream)].alive;
            Delay::new(w.rng.below(3) as u32, dead)
        }
    };
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(classify)
        .refusal_check(refuses)
        .layer(Backends(world.clone(), router.clone()));
    let mut rng = Rng(seed | 1);
    // What clients hold: Streamable HTTP sessions and their GET streams, legacy SSE streams
    // (open or cut), tasks.
    let mut sessions: Vec<String> = Vec::new();
    let mut listens: Vec<ClientBody> = Vec::new();
    let mut streams: Vec<Stream> = Vec::new();
    let mut tasks: Vec<String> = Vec::new();
    let mut number = 0u64;
    for step in 0..steps {
        let stream_ids: Vec<String> = streams.iter().map(|s| s.id.clone()).collect();
        let ask = match rng.below(24) {
            0 => {
                world.lock().unwrap().backends[rng.below(3)].alive = false;
                continue;
            }
            1 | 2 => {
                // A dead backend comes back as a new process, and a health checker's good
                // checks (two bring a down backend back) see it.
                let mut w = world.lock().unwrap();
                let dead: Vec<usize> = (0..3).filter(|&b| !w.backends[b].alive).collect();
                if !dead.is_empty() {
                    let b = &mut w.backends[rng.pick(&dead)];
                    b.alive = true;
                    b.process += 1;
                    if !b.removed {
                        for _ in 0..2 {
                            router
                                .report_health(b.id, Probe::Up, Instant::now())
                                .unwrap();
                        }
                    }
                }
                continue;
            }
            3 => {
                // A client closes a stream, or reads what its legacy streams have (and finds
                // the ones whose backend died cut).
                if !listens.is_empty() && rng.below(3) == 0 {
                    listens.swap_remove(rng.below(listens.len()));
                } else if !streams.is_empty() && rng.below(2) == 0 {
                    streams.swap_remove(rng.below(streams.len()));
                } else {
                    for stream in &mut streams {
                        stream.cut |= drain(&mut stream.body, &mut Vec::new()).is_err();
                    }
                }
                continue;
            }
            4 | 5 => {
                operate(&router, &mut world.lock().unwrap(), &mut rng, paths);
                continue;
            }
            6 | 7 => Ask::Start,
            8 | 9 if !sessions.is_empty() => Ask::Call(rng.pick(&sessions)),
            10 | 11 => Ask::Connect,
            12..=14 if !streams.is_empty() => Ask::Message(rng.pick(&stream_ids)),
            15 => Ask::Tool,
            16 | 17 if !tasks.is_empty() => Ask::Poll(rng.pick(&tasks)),
            18 if !sessions.is_empty() => {
                Ask::TwoSessions(rng.pick(&sessions), rng.pick(&sessions))
            }
            19 if !streams.is_empty() || !tasks.is_empty() => {
                Ask::OtherEra(rng.pick(&[stream_ids, tasks.clone()].concat()))
            }
            20 if !streams.is_empty() && !sessions.is_empty() => {
                Ask::MessageWithSession(rng.pick(&stream_ids), rng.pick(&sessions))
            }
            21 if !streams.is_empty() && !sessions.is_empty() => {
                Ask::CallWithParameter(rng.pick(&sessions), rng.pick(&stream_ids))
            }
            22 if !sessions.is_empty() => Ask::Listen(rng.pick(&sessions)),
            23 if !sessions.is_empty() && rng.below(3) == 0 => Ask::Delete(rng.pick(&sessions)),
            _ => Ask::Start,
        };
        number += 1;
        let modern = |r: http::request::Builder| r.header("mcp-protocol-version", "2026-07-28");
        let request = match &ask {
            Ask::Start => Request::post("/mcp"),
            Ask::Call(id) | Ask::OtherEra(id) => Request::post("/mcp")
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", "2025-11-25"),
            Ask::Listen(id) => Request::get("/mcp").header("mcp-session-id", id),
            Ask::Delete(id) => Request::delete("/mcp").header("mcp-session-id", id),
            Ask::Connect => Request::get("/sse"),
            Ask::Message(id) => Request::post(format!("/messages/?session_id={id}")),
            Ask::Tool => modern(Request::post("/mcp"))
                .header("mcp-method", "tools/call")
                .header("mcp-name", "job"),
            Ask::Poll(id) => modern(Request::post("/mcp"))
                .header("mcp-method", "tasks/get")
                .header("mcp-name", id),
            Ask::TwoSessions(a, b) => Request::post("/mcp")
                .header("mcp-session-id", a)
                .header("mcp-session-id", b),
            Ask::MessageWithSession(id, session) => {
                Request::post(format!("/messages/?session_id={id}"))
                    .header("mcp-session-id", session)
            }
            Ask::CallWithParameter(session, id) => Request::post(format!("/mcp?session_id={id}"))
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25"),
        };
        let body = match &ask {
            Ask::Connect | Ask::Listen(_) | Ask::Delete(_) => "",
            _ => "{\"jsonrpc\":\"2.0\"}",
        };
        let request = request
            .header("x-request", number.to_string())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        // Whether a message's client holds its legacy stream open.
        let held = streams.iter().any(|s| {
            !s.cut
                && matches!(&ask, Ask::Message(id) | Ask::MessageWithSession(id, _) if *id == s.id)
        });
        let from = world.lock().unwrap().deliveries.len();
        // The client waits for its answer, drops the future after a few polls, or drops the
        // body after its first frame.
        let (drops_future, drops_body) = match rng.below(8) {
            0 => (true, false),
            1 => (false, true),
            _ => (false, false),
        };
        let mut future = service.call(request);
        let mut cx = Context::from_waker(Waker::noop());
        let polls = if drops_future { rng.below(4) } else { 1000 };
        let result = (0..=polls).find_map(|_| match future.as_mut().poll(&mut cx) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        });
        drop(future);
        let mut kept = None;
        let answered = match result {
            None => {
                assert!(
                    drops_future,
                    "seed {seed} step {step}: {ask:?} never answered"
                );
                paths.saw("client: drops the response future");
                Answered::Dropped
            }
            Some(Err(_)) => Answered::Failed,
            Some(Ok(response)) => {
                let mut ids = response.headers().get_all("mcp-session-id").iter();
                let session = ids
                    .next()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                // one id
                assert!(
                    ids.next().is_none(),
                    "seed {seed} step {step}: {ask:?} two ids"
                );
                let local = response.body().is_local();
                let status = response.status();
                let mut body = response.into_body().boxed_unsync();
                let mut bytes = Vec::new();
                if drops_body {
                    let mut cx = Context::from_waker(Waker::noop());
                    let _ = Pin::new(&mut body).poll_frame(&mut cx);
                    paths.saw("client: drops the body");
                    Answered::Dropped
                } else if local {
                    Answered::Local(status)
                } else {
                    let whole = drain(&mut body, &mut bytes).is_ok();
                    kept = Some(body);
                    Answered::Backend {
                        status,
                        session,
                        key: key_in(&bytes),
                        whole,
                    }
                }
            }
        };
        let w = world.lock().unwrap();
        let deliveries = &w.deliveries[from..];
        let at = At {
            seed,
            step,
            ask: &ask,
            answered: &answered,
            world: &w,
            router: &router,
            number,
            from,
        };
        assert!(deliveries.iter().all(|d| d.request == number), "{at}");
        for d in deliveries.iter().filter(|d| d.twist != Twist::None) {
            paths.saw(d.twist.name());
        }
        match &ask {
            Ask::Start | Ask::Connect => {
                let started = check_start(&at, deliveries, paths);
                match (started, kept) {
                    (Some(id), _) if matches!(ask, Ask::Start) => sessions.push(id),
                    (Some(id), Some(body)) => streams.push(Stream {
                        id,
                        body,
                        cut: false,
                    }),
                    _ => {}
                }
            }
            Ask::Tool => tasks.extend(check_task_call(&at, deliveries, paths)),
            Ask::Call(id) | Ask::Poll(id) | Ask::Delete(id) => {
                check_keyed(&at, id, true, deliveries, paths);
            }
            Ask::Listen(id) => {
                if check_keyed(&at, id, true, deliveries, paths) {
                    listens.extend(kept);
                }
            }
            Ask::Message(id) => {
                check_keyed(&at, id, held, deliveries, paths);
            }
            Ask::MessageWithSession(id, _) => {
                paths.saw("client: a message with a session header");
                check_keyed(&at, id, held, deliveries, paths);
            }
            Ask::CallWithParameter(id, _) => {
                paths.saw("client: a call with a legacy parameter");
                check_keyed(&at, id, true, deliveries, paths);
            }
            // misroute: delivered nowhere. (A legacy session's or a task's id is no session's.)
            Ask::TwoSessions(..) | Ask::OtherEra(_) => {
                let (expected, path) = match ask {
                    Ask::TwoSessions(..) => (400, "client: two session headers, answered 400"),
                    _ => (404, "client: another era's key, answered 404"),
                };
                assert!(deliveries.is_empty(), "{at}: delivered");
                match answered {
                    Answered::Local(status) if status == expected => paths.saw(path),
                    Answered::Dropped => {}
                    _ => panic!("{at}: not answered {expected}"),
                }
            }
        }
    }
    // Every client goes: a legacy session goes with its last stream, and every key expires.
    drop((listens, streams));
    let _ = router.maintain(Instant::now(), usize::MAX);
    let w = world.lock().unwrap();
    for (b, backend) in w.backends.iter().enumerate().filter(|(_, b)| !b.removed) {
        let keys = router.keys_of(backend.id, 100_000);
        let legacy: Vec<_> = keys
            .iter()
            .filter(|k| k.kind() == KeyKind::SseSession)
            .collect();
        assert!(
            legacy.is_empty(),
            "seed {seed}: legacy sessions outlive their streams on {b}: {legacy:?}"
        );
    }
    let later = Instant::now() + Duration::from_secs(400 * 86_400);
    let _ = router.maintain(later, usize::MAX);
    let left = router.metrics().table.len;
    assert_eq!(
        left, 0,
        "seed {seed}: {left} keys never expire after every client went away"
    );
}

/// An operator's or a health checker's act on a backend.
fn operate(router: &Router, world: &mut World, rng: &mut Rng, paths: &mut Paths) {
    let now = Instant::now();
    let some = |rng: &mut Rng, world: &World, which: fn(&Backend) -> bool| {
        let found: Vec<usize> = (0..3).filter(|&b| which(&world.backends[b])).collect();
        (!found.is_empty()).then(|| rng.pick(&found))
    };
    match rng.below(6) {
        0 => {
            if let Some(backend) = some(rng, world, |b| b.removed) {
                let b = &mut world.backends[backend];
                b.id = router
                    .add_backend(TenantId::DEFAULT, LABELS[backend], 1)
                    .unwrap();
                b.removed = false;
                b.draining = false;
                paths.saw("operator: adds a removed backend back");
            }
        }
        1 => {
            if let Some(backend) = some(rng, world, |b| b.draining && !b.removed) {
                let b = &mut world.backends[backend];
                router.undrain_backend(b.id, now).unwrap();
                b.draining = false;
                paths.saw("operator: undrains");
            }
        }
        2..=4 => {
            let b = &world.backends[rng.below(3)];
            let (probe, path) = match (rng.below(3), b.alive) {
                (0, _) => (Probe::Failed, "operator: a failed probe"),
                (_, false) => (Probe::Refused, "operator: a refused probe"),
                (_, true) => (Probe::Up, "operator: a good probe"),
            };
            if !b.removed {
                router.report_health(b.id, probe, now).unwrap();
                paths.saw(path);
            }
        }
        _ => {
            let _ = router.maintain(now, 1000);
            paths.saw("operator: maintains");
        }
    }
}

/// Whether no backend that lives and the router has ready was left untried.
fn none_left(at: &At<'_>, deliveries: &[Delivery]) -> bool {
    at.router.backends().iter().all(|info| {
        let b = LABELS.iter().position(|l| **l == *info.label).unwrap();
        let tried = deliveries.iter().any(|d| d.backend == b);
        !info.ready() || !at.world.backends[b].alive || tried
    })
}

/// Checks a conversation start (Streamable HTTP or legacy); the session it began, if its
/// client got all of a 2xx answer.
fn check_start(at: &At<'_>, deliveries: &[Delivery], paths: &mut Paths) -> Option<String> {
    let world = at.world;
    // at-most-once: placed again only after what leaves nothing behind.
    let last = deliveries.last();
    for d in &deliveries[..deliveries.len().saturating_sub(1)] {
        assert!(
            d.start_placed_again(),
            "{at}: a start sent again after {d:?}"
        );
        paths.saw(match (d.alive, d.act) {
            (false, _) => "start: placed again after a refusal",
            (_, Act::ResetsUnwritten) => "start: placed again after a reset before it was written",
            (_, Act::DiesBeforeHead) => {
                "start: placed again after its backend died before its head"
            }
            _ if matches!(d.twist, Twist::EmptyFrames(1..)) => {
                "start: placed again after 1 to 16 empty frames"
            }
            (_, Act::DiesAfterHead) => "start: placed again after its backend died after its head",
            _ => "start: placed again after its body ended and its backend died",
        });
    }
    match at.answered {
        Answered::Dropped => None,
        Answered::Failed => {
            assert!(
                last.is_some_and(|d| d.alive && d.act == Act::Fails),
                "{at}: start failed"
            );
            paths.saw("start: failed by its live backend");
            None
        }
        Answered::Local(status) => {
            let twist = last.filter(|d| !d.start_placed_again()).map(|d| &d.twist);
            match twist {
                Some(Twist::TwoIds(a, b)) => {
                    assert_eq!(*status, StatusCode::BAD_GATEWAY, "{at}");
                    for id in [a, b] {
                        let key = Key::new(TenantId::DEFAULT, KeyKind::Session, id.as_bytes());
                        let entry = at.router.table().get(&key.unwrap(), Instant::now());
                        assert!(
                            entry.is_none(),
                            "{at}: {id}, one of two ids, learned: {entry:?}"
                        );
                    }
                    paths.saw("start: two ids, answered 502");
                }
                Some(twist) if twist.unroutable() => {
                    assert_eq!(*status, StatusCode::BAD_GATEWAY, "{at}");
                    paths.saw("start: an unroutable id, answered 502");
                }
                Some(Twist::ForeignId(..)) => {
                    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{at}");
                    paths.saw("start: a foreign id, answered 503");
                }
                _ => {
                    // start: the last backend left nothing behind, and none is left to try.
                    assert!(
                        last.is_none_or(Delivery::start_placed_again),
                        "{at}: start refused"
                    );
                    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{at}");
                    assert!(
                        none_left(at, deliveries),
                        "{at}: start refused with a backend left"
                    );
                    paths.saw("start: no backend left, answered 503");
                }
            }
            None
        }
        Answered::Backend {
            status,
            session,
            key,
            whole,
        } => {
            let last = last.expect("answered by a backend");
            // at-most-once, the other way: placed again whenever it could be.
            assert!(!last.start_placed_again(), "{at}: start not placed again");
            assert!(
                !matches!(last.twist, Twist::TwoIds(..)) && !last.twist.unroutable(),
                "{at}: start forwarded with ids the router cannot route by"
            );
            let expected = match last.twist {
                Twist::Status(s) => StatusCode::from_u16(s).unwrap(),
                _ => StatusCode::OK,
            };
            assert_eq!(*status, expected, "{at}");
            let id = session.as_ref().or(key.as_ref());
            if let Twist::ForeignId(other, owner) = &last.twist {
                assert_eq!(id, Some(other), "{at}");
                assert!(
                    world.gone(other, *owner),
                    "{at}: {other}, a live session of backend {owner}, forwarded"
                );
                paths.saw("start: a gone backend's id, forwarded");
            } else if let Some(id) = id {
                assert!(
                    world.holds(id, last.backend),
                    "{at}: {id} not minted by its backend"
                );
            } else {
                assert!(
                    last.twist == Twist::NoSession || last.act != Act::Answer,
                    "{at}: start answered without a session"
                );
            }
            let cut = matches!(last.act, Act::DiesAfterHead | Act::DiesAfterFrame);
            assert_eq!(*whole, !cut, "{at}: start cut, or not");
            if last.twist.past_empty_bound() && last.act != Act::Answer {
                paths.saw("start: past the empty-frame bound, reached the client");
            } else if last.act == Act::DiesAfterFrame {
                paths.saw("start: cut after its first frame, reached the client");
            } else {
                paths.saw("start: answered");
            }
            id.filter(|_| *whole && status.is_success()).cloned()
        }
    }
}

/// Checks a 2026-07-28 call that creates a task: placed again only after a refusal or a
/// reset before it was written (a backend that died under it may have run it); the task it
/// created, if its client got all of a 200 answer.
fn check_task_call(at: &At<'_>, deliveries: &[Delivery], paths: &mut Paths) -> Option<String> {
    let last = deliveries.last();
    for d in &deliveries[..deliveries.len().saturating_sub(1)] {
        paths.saw(match (d.alive, d.act) {
            (false, _) => "task call: placed again after a refusal",
            (true, Act::ResetsUnwritten) => {
                "task call: placed again after a reset before it was written"
            }
            _ => panic!("{at}: a task-creating call sent again after {d:?}"),
        });
    }
    match at.answered {
        Answered::Dropped => None,
        Answered::Failed => {
            let failed =
                |d: &Delivery| d.alive && matches!(d.act, Act::Fails | Act::DiesBeforeHead);
            assert!(last.is_some_and(failed), "{at}: task call failed");
            None
        }
        Answered::Local(status) => {
            assert!(
                last.is_none_or(|d| !d.alive || d.act == Act::ResetsUnwritten),
                "{at}"
            );
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{at}");
            assert!(
                none_left(at, deliveries),
                "{at}: task call refused with a backend left"
            );
            None
        }
        Answered::Backend {
            status, key, whole, ..
        } => {
            let last = last.expect("answered by a backend");
            assert!(last.alive, "{at}: answered by a dead backend");
            if let Some(id) = key {
                assert!(
                    at.world.holds(id, last.backend),
                    "{at}: {id} not minted by its backend"
                );
            }
            let cut = matches!(last.act, Act::DiesAfterHead | Act::DiesAfterFrame);
            assert_eq!(*whole, !cut, "{at}: task call cut, or not");
            let task = key.clone().filter(|_| *whole && *status == StatusCode::OK);
            if task.is_some() {
                paths.saw("task call: answered with a task");
            }
            task
        }
    }
}

/// Checks a request of a key (a session's, a legacy session's, a task's): `held`, for a
/// legacy message, whether its client holds its stream open. Whether it was answered with a
/// success.
fn check_keyed(
    at: &At<'_>,
    key: &str,
    held: bool,
    deliveries: &[Delivery],
    paths: &mut Paths,
) -> bool {
    let world = at.world;
    let minters = &world.minted[key];
    let first_minter = minters[0];
    // misroute: a backend that minted it, at most once; a second minter only once the first
    // is gone.
    assert!(deliveries.len() <= 1, "{at}: {key} sent twice");
    let delivered = deliveries.first();
    if let Some(d) = delivered {
        assert_eq!(d.asked, Asked::Keyed(key.to_string()), "{at}");
        assert!(
            minters.iter().any(|m| m.backend == d.backend),
            "{at}: {key} misrouted"
        );
        if d.backend != first_minter.backend {
            assert!(
                !world.lives(first_minter),
                "{at}: {key} sent to its second minter"
            );
        }
    }
    // (Deleted by an earlier request: this one's delete is its answer.)
    let deleted = world.deleted.get(key).is_some_and(|&n| n != at.number);
    let live = held && minters.len() == 1 && world.lives(first_minter) && !deleted;
    let success = match at.answered {
        Answered::Dropped => return false,
        Answered::Backend { status, .. } => status.is_success(),
        Answered::Local(_) | Answered::Failed => false,
    };
    if success {
        // gone: only the process that minted it answers.
        let d = delivered.expect("a success comes from a backend");
        assert!(
            d.alive && world.holds(key, d.backend),
            "{at}: {key} answered by a gone process"
        );
        if live {
            paths.saw(match at.ask {
                Ask::Listen(_) => "live: a session's stream opened",
                Ask::Delete(_) => "live: a session deleted",
                Ask::Message(_) | Ask::MessageWithSession(..) => "live: a legacy message answered",
                Ask::Poll(_) => "live: a task's poll answered",
                _ => "live: a session's call answered",
            });
        }
    } else if live {
        // live: only its backend's failure (it lives on: a reset, written or not).
        let d = delivered.expect("a live key is delivered");
        let failed = matches!(at.answered, Answered::Failed) && d.act == Act::Fails;
        let unwritten = matches!(
            at.answered,
            Answered::Local(StatusCode::SERVICE_UNAVAILABLE)
        ) && d.act == Act::ResetsUnwritten;
        assert!(failed || unwritten, "{at}: live {key} refused");
        paths.saw("live: failed by its backend");
    } else if let Answered::Local(StatusCode::NOT_FOUND) = at.answered {
        paths.saw("gone: refused by the router");
    }
    success
}

#[test]
fn the_layer_keeps_its_promises_against_hostile_peers() {
    let seeds: u64 = std::env::var("TOWER_DRIVER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut paths = Paths::default();
    for seed in 0..seeds {
        run(seed, 80, &mut paths);
    }
    eprintln!("{paths:#?}");
    let unlisted: Vec<_> = paths.0.keys().filter(|p| !PATHS.contains(p)).collect();
    assert!(
        unlisted.is_empty(),
        "paths taken but not in PATHS: {unlisted:?}"
    );
    let missed: Vec<_> = PATHS.iter().filter(|p| !paths.0.contains_key(*p)).collect();
    assert!(
        missed.is_empty(),
        "the driver never took these paths: {missed:?}"
    );
}
