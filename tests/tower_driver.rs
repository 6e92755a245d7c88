//! A randomised driver for the tower layer (`tower::AffinityLayer`) with a refusal check,
//! in front of three backends that crash and come back: a plain loop over a seeded RNG. A
//! backend answers, or dies under a request at one of four points (before its head, after its
//! head and before the body's first frame, after that frame, or fails a request while it lives
//! on); a dead one refuses connections, and its legacy SSE streams fail, until it comes back as
//! a new process (the router hears of it from a health checker). Clients start Streamable HTTP
//! conversations and call their sessions; open legacy SSE streams, send messages on them, read
//! them and close them; and make 2026-07-28 calls that create tasks, and poll the tasks.
//!
//! After every request it checks what a proxy author is promised:
//!
//! - `misroute`: a request with a session (header or legacy query parameter) reaches only the
//!   backend that minted it, at most once;
//! - `start`: a conversation start (an `initialize`, a legacy connect) is answered by a live
//!   backend with a session that backend minted; it fails only if the backend that took it
//!   failed it while alive (the request may have run), died after the first frame of its
//!   answer, or every backend is dead;
//! - `at-most-once`: a start is sent again only after a backend refused it or died before its
//!   answer's first frame; a task-creating call (which may have run wherever its backend died)
//!   only after a refusal;
//! - `live`: a call of a session or a poll of a task whose backend lives (the same process),
//!   or a message on a legacy stream its client holds open, gets that backend's answer, never a 404 or 503 of
//!   the router's, unless the backend failed it;
//! - `gone`: a request of a session whose process is gone is never answered with a success.
//!
//! It also asserts that the run took each of those paths. Run more seeds with
//! `TOWER_DRIVER_SEEDS=N` (default 1,000, of 80 steps each).
#![cfg(all(feature = "tower", feature = "tasks"))]
#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use futures_executor::block_on;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use mcp_affinity::router::{Probe, Router, Undelivered};
use mcp_affinity::tower::{AffinityLayer, ReplayBody, Upstream};
use mcp_affinity::{BackendId, TenantId};
use tower_layer::Layer;
use tower_service::Service;

const LABELS: [&str; 3] = ["http://a.test:1", "http://b.test:2", "http://c.test:3"];

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
}

/// What a backend does with the request it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Answer,
    /// Dies before its head: the connection is reset.
    DiesBeforeHead,
    /// Sends its head and dies before the body's first frame.
    DiesAfterHead,
    /// Sends its head and the first frame, then dies.
    DiesAfterFrame,
    /// Fails the request (a reset after it was written) and lives on.
    Fails,
}

/// What the service was asked: the backend (by index), the request's number, its session.
#[derive(Clone, Debug)]
struct Delivery {
    backend: usize,
    request: u64,
    session: Option<String>,
    act: Act,
    /// Whether the backend was alive when it got the request.
    alive: bool,
    /// A 2026-07-28 call that creates a task.
    task_call: bool,
}

/// The backends' world, shared by the service and the driver.
struct World {
    rng: Rng,
    alive: [bool; 3],
    incarnation: [u32; 3],
    /// Sessions minted: id → (backend, incarnation).
    minted: HashMap<String, (usize, u32)>,
    minted_count: u64,
    deliveries: Vec<Delivery>,
}

#[derive(Debug)]
enum Failure {
    /// Nothing listens: the connection was refused.
    Refused,
    /// The connection was reset: the request may have been written.
    Reset,
}

fn classify(failure: &Failure) -> Option<Undelivered> {
    match failure {
        Failure::Refused => Some(Undelivered::Refused),
        Failure::Reset => None,
    }
}

/// A response body: frames, then, for a legacy SSE stream, nothing more for as long as its
/// backend's process lives (an error once it is gone), else an error or the end.
struct Frames {
    frames: VecDeque<Bytes>,
    fails: bool,
    open: Option<(Arc<Mutex<World>>, usize, u32)>,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Failure>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(frame))));
        }
        if let Some((world, backend, incarnation)) = &self.open {
            let w = world.lock().unwrap();
            if w.alive[*backend] && w.incarnation[*backend] == *incarnation {
                // (Polled again by hand, never woken.)
                return Poll::Pending;
            }
            drop(w);
            self.open = None;
            self.fails = true;
        }
        Poll::Ready(std::mem::take(&mut self.fails).then_some(Err(Failure::Reset)))
    }
}

/// The forwarding service: plays the backend the layer names.
#[derive(Clone)]
struct Backends(Arc<Mutex<World>>);

fn backend_of(upstream: &Upstream) -> usize {
    LABELS.iter().position(|l| *l == upstream.label()).unwrap()
}

/// The key a request names: its session header, a legacy message's query parameter, or a
/// task poll's `Mcp-Name`.
fn session_of<B>(request: &Request<B>) -> Option<String> {
    let header = |name| request.headers().get(name).map(|v| v.to_str().unwrap());
    let query = request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("session_id="));
    let task = header("mcp-name").filter(|_| header("mcp-method") == Some("tasks/get"));
    header("mcp-session-id")
        .or(query)
        .or(task)
        .map(str::to_string)
}

impl Service<Request<ReplayBody<Full<Bytes>>>> for Backends {
    type Response = Response<Frames>;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Frames>, Failure>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        let backend = backend_of(request.body().upstream().unwrap());
        let number: u64 = request.headers()["x-request"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let session = session_of(&request);
        let connect = request.uri().path() == "/sse";
        let task_call = request.headers().contains_key("mcp-method") && session.is_none();
        let mut world = self.0.lock().unwrap();
        let alive = world.alive[backend];
        let act = match world.rng.below(20) {
            0 => Act::DiesBeforeHead,
            1 => Act::DiesAfterHead,
            2 => Act::DiesAfterFrame,
            3 => Act::Fails,
            _ => Act::Answer,
        };
        world.deliveries.push(Delivery {
            backend,
            request: number,
            session: session.clone(),
            act,
            alive,
            task_call,
        });
        if !alive {
            return Box::pin(std::future::ready(Err(Failure::Refused)));
        }
        let incarnation = world.incarnation[backend];
        let mut head = Response::builder().header("content-type", "text/event-stream");
        let mut first = Bytes::from_static(b"event: message\ndata: {\"result\":{}}\n\n");
        let status = match &session {
            None => {
                world.minted_count += 1;
                let id = format!("{backend}-{incarnation}-{}", world.minted_count);
                world.minted.insert(id.clone(), (backend, incarnation));
                if connect {
                    let endpoint = format!("event: endpoint\ndata: /messages/?session_id={id}\n\n");
                    first = Bytes::from(endpoint);
                } else if task_call {
                    head = Response::builder().header("content-type", "application/json");
                    first = Bytes::from(format!(
                        r#"{{"jsonrpc":"2.0","id":1,"result":{{"resultType":"task","taskId":"{id}","status":"working"}}}}"#
                    ));
                } else {
                    head = head.header("mcp-session-id", id);
                }
                StatusCode::OK
            }
            // The backend's own answer to a session it does not hold.
            Some(id) if world.minted.get(id) != Some(&(backend, incarnation)) => {
                StatusCode::NOT_FOUND
            }
            // A legacy message is answered on its stream.
            Some(_) if request.uri().path() == "/messages/" => StatusCode::ACCEPTED,
            Some(_) => StatusCode::OK,
        };
        let (frames, fails) = match act {
            Act::Answer => (vec![first], false),
            Act::DiesBeforeHead | Act::Fails => {
                world.alive[backend] &= act == Act::Fails;
                return Box::pin(std::future::ready(Err(Failure::Reset)));
            }
            Act::DiesAfterHead => (vec![], true),
            Act::DiesAfterFrame => (vec![first], true),
        };
        if act != Act::Answer {
            world.alive[backend] = false;
        }
        let open =
            (connect && status == StatusCode::OK).then(|| (self.0.clone(), backend, incarnation));
        let response = head
            .status(status)
            .body(Frames {
                frames: frames.into(),
                fails,
                open,
            })
            .unwrap();
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// How often each path was taken, over all seeds: the driver must reach every one.
#[derive(Debug, Default)]
struct Paths {
    /// Starts placed again after their backend refused, died before its head, or died
    /// after its head and before the first frame.
    replaced_refused: u64,
    replaced_before_head: u64,
    replaced_after_head: u64,
    /// Calls answered by their live backend, legacy messages too, and calls of a gone process
    /// the router refused.
    live_answered: u64,
    messages_answered: u64,
    /// Task-creating calls placed again after a refusal.
    tools_replaced: u64,
    gone_refused: u64,
}

/// How a client's request ended.
#[derive(Debug)]
enum Answered {
    /// A status, the session header, whether the whole body came.
    Status(StatusCode, Option<String>, bool),
    Failed,
}

/// A response body as the client holds it.
type ClientBody = UnsyncBoxBody<Bytes, Failure>;

/// Reads what `body` has now (polled by hand: a legacy stream stays open); whether it failed.
fn drain(body: &mut ClientBody, into: &mut Vec<u8>) -> Result<(), Failure> {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    into.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(failure))) => return Err(failure),
            Poll::Ready(None) | Poll::Pending => return Ok(()),
        }
    }
}

/// A client's request.
#[derive(Clone, Debug)]
enum Ask {
    /// An `initialize`, and a Streamable HTTP session's call.
    Start,
    Call(String),
    /// A legacy SSE connect, and a message of its session.
    Connect,
    Message(String),
    /// A 2026-07-28 `tools/call` answered with a task, and a `tasks/get` of that task.
    Tool,
    Poll(String),
}

/// A legacy SSE stream a client holds open.
struct Stream {
    id: String,
    body: ClientBody,
    /// Its body failed (its backend died).
    cut: bool,
}

fn run(seed: u64, steps: usize, paths: &mut Paths) {
    let router = Arc::new(Router::builder().build());
    let ids: Vec<BackendId> = LABELS
        .iter()
        .map(|l| router.add_backend(TenantId::DEFAULT, l, 1).unwrap())
        .collect();
    let world = Arc::new(Mutex::new(World {
        rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        alive: [true; 3],
        incarnation: [0; 3],
        minted: HashMap::new(),
        minted_count: 0,
        deliveries: Vec::new(),
    }));
    let refuses = {
        let world = world.clone();
        move |upstream: &Upstream| {
            let dead = !world.lock().unwrap().alive[backend_of(upstream)];
            std::future::ready(dead)
        }
    };
    let mut service = AffinityLayer::new(router.clone(), Instant::now)
        .undelivered(classify)
        .refusal_check(refuses)
        .layer(Backends(world.clone()));
    let mut rng = Rng(seed | 1);
    // The Streamable HTTP sessions clients hold, and their legacy SSE streams (open or not).
    let mut sessions: Vec<String> = Vec::new();
    let mut streams: Vec<Stream> = Vec::new();
    let mut tasks: Vec<String> = Vec::new();
    let mut number = 0u64;
    for step in 0..steps {
        let at = format!("seed {seed} step {step}");
        let ask = match rng.below(15) {
            0 => {
                let backend = rng.below(3);
                world.lock().unwrap().alive[backend] = false;
                continue;
            }
            1 => {
                let backend = rng.below(3);
                let mut w = world.lock().unwrap();
                if !w.alive[backend] {
                    w.alive[backend] = true;
                    w.incarnation[backend] += 1;
                    drop(w);
                    // A health checker's good checks (two bring a down backend back).
                    for _ in 0..2 {
                        router
                            .report_health(ids[backend], Probe::Up, Instant::now())
                            .unwrap();
                    }
                }
                continue;
            }
            2 => {
                // A client closes a stream, or reads what its streams have (and finds the
                // ones whose backend died cut).
                if !streams.is_empty() && rng.below(2) == 0 {
                    streams.swap_remove(rng.below(streams.len()));
                } else {
                    for stream in &mut streams {
                        stream.cut |= drain(&mut stream.body, &mut Vec::new()).is_err();
                    }
                }
                continue;
            }
            3 | 4 => Ask::Start,
            5 | 6 if !sessions.is_empty() => Ask::Call(sessions[rng.below(sessions.len())].clone()),
            7 | 8 => Ask::Connect,
            9..=11 if !streams.is_empty() => {
                Ask::Message(streams[rng.below(streams.len())].id.clone())
            }
            12 => Ask::Tool,
            13 | 14 if !tasks.is_empty() => Ask::Poll(tasks[rng.below(tasks.len())].clone()),
            _ => Ask::Start,
        };
        number += 1;
        let request = match &ask {
            Ask::Start => Request::post("/mcp"),
            Ask::Call(id) => Request::post("/mcp")
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", "2025-11-25"),
            Ask::Connect => Request::get("/sse"),
            Ask::Message(id) => Request::post(format!("/messages/?session_id={id}")),
            Ask::Tool => Request::post("/mcp")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "job"),
            Ask::Poll(id) => Request::post("/mcp")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tasks/get")
                .header("mcp-name", id),
        };
        let body = if matches!(ask, Ask::Connect) {
            ""
        } else {
            "{\"jsonrpc\":\"2.0\"}"
        };
        let request = request
            .header("x-request", number.to_string())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        // An open legacy stream stays open: only what it has now is read.
        let open = streams
            .iter()
            .find(|s| matches!(&ask, Ask::Message(id) if *id == s.id))
            .is_some_and(|s| !s.cut);
        let before = world.lock().unwrap().deliveries.len();
        let answered = match block_on(service.call(request)) {
            Err(_) => Answered::Failed,
            Ok(response) => {
                let status = response.status();
                let id = response
                    .headers()
                    .get("mcp-session-id")
                    .map(|v| v.to_str().unwrap().to_string());
                let mut body = response.into_body().boxed_unsync();
                let mut bytes = Vec::new();
                let whole = drain(&mut body, &mut bytes).is_ok();
                // A legacy session's id is in its endpoint event, a task's in its result.
                let endpoint = std::str::from_utf8(&bytes).ok().and_then(|text| {
                    if let Some((_, rest)) = text.split_once("session_id=") {
                        return Some(rest.split_once('\n')?.0.to_string());
                    }
                    let (_, rest) = text.split_once(r#""taskId":""#)?;
                    Some(rest.split_once('"')?.0.to_string())
                });
                if let (Ask::Connect, Some(id), true) = (&ask, &endpoint, whole) {
                    streams.push(Stream {
                        id: id.clone(),
                        body,
                        cut: false,
                    });
                }
                Answered::Status(status, id.or(endpoint), whole)
            }
        };
        let w = world.lock().unwrap();
        let deliveries = &w.deliveries[before..];
        let health: Vec<String> = router
            .backends()
            .iter()
            .map(|b| format!("{:?}/{}", b.health, b.ready()))
            .collect();
        let at = format!(
            "{at} {ask:?} (router: {health:?}, history: {:?})",
            &w.deliveries[w.deliveries.len().saturating_sub(6)..]
        );
        assert!(deliveries.iter().all(|d| d.request == number), "{at}");
        match &ask {
            Ask::Start | Ask::Connect => {
                if let Some(id) = check_start(&w, deliveries, &answered, &at) {
                    if matches!(ask, Ask::Start) {
                        sessions.push(id);
                    }
                }
            }
            Ask::Tool => {
                if let Some(id) = check_tool(&w, deliveries, &answered, &at) {
                    tasks.push(id);
                }
            }
            Ask::Poll(id) => check_call(&w, id, true, deliveries, &answered, &at),
            // A call, or a message on a stream the client still holds open.
            Ask::Call(id) => check_call(&w, id, true, deliveries, &answered, &at),
            Ask::Message(id) => check_call(&w, id, open, deliveries, &answered, &at),
        }
        let session = match &ask {
            Ask::Call(id) | Ask::Message(id) | Ask::Poll(id) => Some(id.as_str()),
            _ => None,
        };
        count(&w, session, deliveries, &answered, paths);
    }
}

/// Checks a conversation start; the session it began, if the client got all of its answer.
fn check_start(
    world: &World,
    deliveries: &[Delivery],
    answered: &Answered,
    at: &str,
) -> Option<String> {
    // at-most-once: every delivery but the last was refused, or its backend died before its
    // answer's first frame.
    if let Some((_, earlier)) = deliveries.split_last() {
        for d in earlier {
            assert!(
                !d.alive || matches!(d.act, Act::DiesBeforeHead | Act::DiesAfterHead),
                "{at}: a start sent again after {d:?}: {deliveries:?}"
            );
        }
    }
    let last = deliveries.last();
    match answered {
        Answered::Status(StatusCode::OK, Some(id), whole) => {
            let last = last.expect("answered by a backend");
            assert!(
                last.alive,
                "{at}: answered by a dead backend: {deliveries:?}"
            );
            assert_eq!(
                world.minted.get(id).map(|m| m.0),
                Some(last.backend),
                "{at}: start: {id} not minted by the backend that answered"
            );
            assert!(
                *whole || last.act == Act::DiesAfterFrame,
                "{at}: start cut: {deliveries:?}"
            );
            whole.then(|| id.clone())
        }
        // Failed by a backend that lives on (the request may have run).
        Answered::Failed => {
            assert!(
                last.is_some_and(|d| d.alive && d.act == Act::Fails),
                "{at}: start failed: {deliveries:?}"
            );
            None
        }
        Answered::Status(status, _, _) => {
            assert!(
                status.is_server_error() && world.alive.iter().all(|a| !a),
                "{at}: start answered {status} with a backend alive {:?}: {deliveries:?}",
                world.alive
            );
            None
        }
    }
}

/// Checks a 2026-07-28 call that creates a task: placed again only after a refusal (it is
/// not a conversation start: a backend that died under it may have run it), answered by a
/// live backend that minted the task; the task it created, if the client got all of its answer.
fn check_tool(
    world: &World,
    deliveries: &[Delivery],
    answered: &Answered,
    at: &str,
) -> Option<String> {
    if let Some((_, earlier)) = deliveries.split_last() {
        for d in earlier {
            assert!(
                !d.alive,
                "{at}: a call sent again after {d:?}: {deliveries:?}"
            );
        }
    }
    let last = deliveries.last();
    match answered {
        Answered::Status(StatusCode::OK, Some(id), whole) => {
            let last = last.expect("answered by a backend");
            assert!(
                last.alive,
                "{at}: answered by a dead backend: {deliveries:?}"
            );
            assert_eq!(
                world.minted.get(id).map(|m| m.0),
                Some(last.backend),
                "{at}"
            );
            whole.then(|| id.clone())
        }
        // Failed, or cut, by the backend that took it (it may have run it).
        Answered::Failed | Answered::Status(StatusCode::OK, None, false) => {
            assert!(
                last.is_some_and(|d| d.alive && d.act != Act::Answer),
                "{at}: call failed: {deliveries:?}"
            );
            None
        }
        Answered::Status(status, _, _) => {
            assert!(
                status.is_server_error() && world.alive.iter().all(|a| !a),
                "{at}: call answered {status} with a backend alive {:?}: {deliveries:?}",
                world.alive
            );
            None
        }
    }
}

/// Checks a call of a session, or a message of a legacy one (`open`: whether the client
/// still holds its stream open).
fn check_call(
    world: &World,
    id: &str,
    open: bool,
    deliveries: &[Delivery],
    answered: &Answered,
    at: &str,
) {
    let (owner, incarnation) = world.minted[id];
    // misroute: only the owner, at most once.
    assert!(
        deliveries.len() <= 1,
        "{at}: {id} sent twice: {deliveries:?}"
    );
    if let Some(d) = deliveries.first() {
        assert_eq!(d.backend, owner, "{at}: {id} misrouted: {d:?}");
        assert_eq!(d.session.as_deref(), Some(id), "{at}");
    }
    let same_process = world.incarnation[owner] == incarnation;
    match answered {
        Answered::Status(status, _, _) if status.is_success() => {
            let d = deliveries.first().expect("a success comes from a backend");
            assert!(
                d.alive && same_process,
                "{at}: {id} answered {status} by a gone process"
            );
        }
        Answered::Failed => assert!(
            deliveries
                .first()
                .is_some_and(|d| d.alive && d.act != Act::Answer),
            "{at}: {id} failed: {deliveries:?}"
        ),
        Answered::Status(status, _, _) => {
            // live: a live session is answered by its backend unless the backend failed it
            // (a legacy one while its stream is open).
            let live = open && world.alive[owner] && same_process;
            let failed_it = deliveries.first().is_some_and(|d| d.act != Act::Answer);
            assert!(
                !live || failed_it,
                "{at}: live session {id} answered {status}: {deliveries:?}"
            );
        }
    }
}

fn count(
    world: &World,
    session: Option<&str>,
    deliveries: &[Delivery],
    answered: &Answered,
    paths: &mut Paths,
) {
    let Some((_, earlier)) = deliveries.split_last() else {
        return;
    };
    match session {
        None if deliveries.last().is_some_and(|d| d.task_call) => {
            paths.tools_replaced += earlier.len() as u64;
        }
        None => {
            for d in earlier {
                match (d.alive, d.act) {
                    (false, _) => paths.replaced_refused += 1,
                    (true, Act::DiesBeforeHead) => paths.replaced_before_head += 1,
                    (true, Act::DiesAfterHead) => paths.replaced_after_head += 1,
                    _ => {}
                }
            }
        }
        Some(id) => {
            let (owner, incarnation) = world.minted[id];
            let live = world.incarnation[owner] == incarnation;
            match answered {
                Answered::Status(StatusCode::OK, ..) => paths.live_answered += 1,
                Answered::Status(StatusCode::ACCEPTED, ..) => paths.messages_answered += 1,
                Answered::Status(StatusCode::NOT_FOUND, ..) if !live || !deliveries[0].alive => {
                    paths.gone_refused += 1
                }
                _ => {}
            }
        }
    }
}

#[test]
fn the_layer_keeps_its_promises_while_backends_crash() {
    let seeds: u64 = std::env::var("TOWER_DRIVER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut paths = Paths::default();
    for seed in 0..seeds {
        run(seed, 80, &mut paths);
    }
    eprintln!("{paths:?}");
    let Paths {
        replaced_refused,
        replaced_before_head,
        replaced_after_head,
        live_answered,
        messages_answered,
        tools_replaced,
        gone_refused,
    } = paths;
    for (path, n) in [
        ("a start placed again after a refusal", replaced_refused),
        (
            "… after its backend died before its head",
            replaced_before_head,
        ),
        (
            "… after its backend died before the first frame",
            replaced_after_head,
        ),
        ("a live session's call answered", live_answered),
        (
            "a live legacy session's message answered",
            messages_answered,
        ),
        (
            "a task-creating call placed again after a refusal",
            tools_replaced,
        ),
        ("a gone session's call refused", gone_refused),
    ] {
        assert!(n > 0, "the driver never took this path: {path}");
    }
}
