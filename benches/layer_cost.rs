//! What the router costs a proxy per request, through the tower layer, side by side in one run
//! with the same forwarding service called without it (the ceiling):
//!
//! - `bare`: the forwarding service alone, called with the request, its answer's body drained;
//! - `layer`: the same service behind [`AffinityLayer`], for a session the router knows
//!   (`POST /mcp` with `Mcp-Session-Id` and `MCP-Protocol-Version`): the decision, the
//!   `Upstream` the body carries, the response head shown to the router, the body watched to
//!   its end (an SSE answer; a call's answer teaches the router nothing, so it is not parsed)
//!   and the exchange ended;
//! - `layer/json`: the same with a JSON answer (`application/json`).
//!
//! The service answers at once, as a stand-in backend: what is measured is what the layer adds
//! around a forwarder, without sockets, HTTP codecs or a runtime (futures are polled by hand
//! with a no-op waker; none pends). Each request is made in the timed loop on both sides, so
//! the difference is the layer's. Run with
//! `cargo bench --bench layer_cost`; with `TOWER_BENCH_ROUNDS=N` it times the two sides in
//! turn instead, N rounds (see [`interleaved`]).
//!
//! Measured 2026-12-02 on the project's 2-core VM, which was noisy that day (the same build's
//! `bare` moved by 1.5x from one run to the next):
//!
//! | case | bare | layer | what the layer adds |
//! |---|---|---|---|
//! | SSE answer (criterion medians) | 1.52 µs | 3.04 µs | 1.52 µs |
//! | JSON answer (criterion medians) | 1.63 µs | 2.82 µs | 1.19 µs |
//!
//! The layer's future, boxed for every request, was 2,232 bytes here (2,760 in
//! `examples/proxy`, where the forwarder's own was 2,176 more): `async fn`s keep each
//! argument twice, and what a step was given stayed in the future across the later waits.
//! Reshaped (the steps in blocks of their own, the request's parts lent rather than moved,
//! the rare wait on the shared store boxed apart), it is 784 bytes (912 in the proxy, under
//! the 1,032 bytes glibc keeps per-thread caches for; the forwarder's 584). Against its parent
//! in the same session: the instructions the layer adds per request, by callgrind (exact, and
//! deaf to the machine's noise), went from about 6,900 to about 5,000 (1,917 fewer per request,
//! over 40,000 requests); the time it adds, interleaved (`TOWER_BENCH_ROUNDS=30`, four runs of
//! each build in turn, medians), from about 1.94 µs to 1.51 µs (SSE) and 1.96 to 1.53 µs (JSON):
//! 0.78x. (Timed with requests made in batches ahead, the new build looked slower: glibc then
//! spent a sixth of the time consolidating free chunks, a pattern that requests made and freed
//! one at a time, as a server's are, do not produce; so both sides now make them in the loop.)
//!
//! 2026-12-03, after the `Upstream` moved from a request extension (three allocations) to the
//! body, and the response head was shown without a future of its own: four runs of
//! `TOWER_BENCH_ROUNDS=30`, this build and its parent `fb3a8c7` in turn, the fastest passes
//! (the medians moved by up to 1.4x from run to run on a disturbed machine):
//!
//! | case | bare | layer, `fb3a8c7` | layer | what the layer adds, `fb3a8c7` | what it adds |
//! |---|---|---|---|---|---|
//! | SSE answer | 729 to 734 ns | 1,365 ns | 1,214 ns | 631 ns | 485 ns (0.77x) |
//! | JSON answer | 727 to 734 ns | 1,354 ns | 1,224 ns | 620 ns | 497 ns (0.80x) |
#![allow(clippy::disallowed_methods)] // benches may read the clock

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use mcp_affinity::TenantId;
use mcp_affinity::router::Router;
use mcp_affinity::table::MemoryTable;
use mcp_affinity::tower::{Affinity, AffinityLayer, PassErrors, ReplayBody, Upstream};
use tower_layer::Layer;
use tower_service::Service;

/// An answer like rmcp's to `tools/call`: one SSE event of about 200 bytes.
const SSE: &str = "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\
\"text\":\"replica-1 answered call number 7 of this session\"}],\"isError\":false}}\n\n";
const JSON: &str = "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\
\"text\":\"replica-1 answered call number 7 of this session\"}],\"isError\":false}}";

/// A stand-in backend that answers at once: a new session's id to a request without one, else
/// the answer in `sse` or JSON. It reads the `Upstream` the layer names, as a forwarder does.
#[derive(Clone)]
struct Backend {
    sse: bool,
}

/// Where a request goes: the layer's body names it; a body without the layer names nothing.
trait Destination {
    fn upstream(&self) -> Option<&Upstream>;
}

impl<B> Destination for ReplayBody<B> {
    fn upstream(&self) -> Option<&Upstream> {
        ReplayBody::upstream(self)
    }
}

impl Destination for Full<Bytes> {
    fn upstream(&self) -> Option<&Upstream> {
        None
    }
}

impl<B: Destination> Service<Request<B>> for Backend {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        black_box(request.body().upstream().map(Upstream::backend));
        let mut response = Response::builder();
        if !request.headers().contains_key("mcp-session-id") {
            response = response.header("mcp-session-id", "s-bench-1");
        }
        let (kind, body) = if self.sse {
            ("text/event-stream", SSE)
        } else {
            ("application/json", JSON)
        };
        let response = response
            .header("content-type", kind)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid response");
        drop(request);
        std::future::ready(Ok(response))
    }
}

/// Polls `future` once: everything here is ready at once.
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("nothing here pends"),
    }
}

/// Drains `body`, returning the bytes it gave.
fn drain<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut len = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => len += frame.data_ref().map_or(0, Bytes::len),
            Poll::Ready(Some(Err(_))) => panic!("the body failed"),
            Poll::Ready(None) => return len,
            Poll::Pending => unreachable!("nothing here pends"),
        }
    }
}

/// A request of the session `s-bench-1`, as a client sends its calls.
fn call() -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", "s-bench-1")
        .header("mcp-protocol-version", "2025-11-25")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami"}}"#,
        )))
        .expect("a valid request")
}

/// The layer around a [`Backend`] answering in `sse` or JSON, with the session `s-bench-1`
/// made as a client makes it (`initialize` through the layer), and its router.
fn layered(sse: bool) -> (Layered, Arc<Router>) {
    let router = Arc::new(Router::builder().build());
    router
        .add_backend(TenantId::DEFAULT, "http://127.0.0.1:9001", 1)
        .unwrap();
    let clock: fn() -> Instant = Instant::now;
    let mut service = AffinityLayer::new(router.clone(), clock).layer(Backend { sse });
    let initialize = Request::post("/mcp")
        .header("host", "127.0.0.1:8080")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    drain(now(service.call(initialize)).unwrap().into_body());
    assert_eq!(router.metrics().keys_learned, 1, "the session is known");
    (service, router)
}

type Layered = Affinity<Backend, MemoryTable, fn() -> Instant, PassErrors>;

fn layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("tower");
    for (name, sse, len) in [("sse", true, SSE.len()), ("json", false, JSON.len())] {
        let (mut service, router) = layered(sse);
        // Both paths give the whole answer, or the comparison means nothing.
        let answer = now(service.call(call())).unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(drain(answer.into_body()), len);
        let mut bare = Backend { sse };
        assert_eq!(drain(now(bare.call(call())).unwrap().into_body()), len);

        // Each request is made in the timed loop, on both sides: made, served and freed one
        // after another, as a server's are. (Made in batches ahead, they left the allocator
        // in a state no proxy sees, and the comparison moved with it.)
        group.bench_function(format!("bare/{name}"), |b| {
            b.iter(|| drain(now(bare.call(call())).unwrap().into_body()))
        });
        group.bench_function(format!("layer/{name}"), |b| {
            b.iter(|| drain(now(service.call(call())).unwrap().into_body()))
        });
        // Every call was routed to the session's backend: none was rejected on the way.
        let metrics = router.metrics();
        assert_eq!(metrics.rejected_total(), 0);
        assert!(
            metrics.pinned >= 1,
            "the calls were routed by their session"
        );
    }
    group.finish();
}

/// `TOWER_BENCH_ROUNDS=N`: instead of criterion, time each case in turn, a batch of requests
/// each, for N rounds, and print per case the median and fastest ns per request, and the
/// median of the rounds' paired differences (layer minus bare). On a machine shared with
/// other work, load that comes and goes then hits both sides of a pair alike.
fn interleaved(rounds: usize) {
    const BATCH: usize = 20_000;
    for (name, sse) in [("sse", true), ("json", false)] {
        let (mut service, router) = layered(sse);
        let mut bare = Backend { sse };
        let (mut bare_ns, mut layer_ns) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (times, through_layer) in [(&mut bare_ns, false), (&mut layer_ns, true)] {
                // Each request made just before it is served, on both sides (see `layer`).
                let start = Instant::now();
                for _ in 0..BATCH {
                    let request = call();
                    let answer = match through_layer {
                        true => drain(now(service.call(request)).unwrap().into_body()),
                        false => drain(now(bare.call(request)).unwrap().into_body()),
                    };
                    black_box(answer);
                }
                times.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
            }
        }
        assert_eq!(router.metrics().rejected_total(), 0);
        let mut added: Vec<f64> = layer_ns.iter().zip(&bare_ns).map(|(l, b)| l - b).collect();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0])
        };
        let (bare_median, bare_best) = median(&mut bare_ns);
        let (layer_median, layer_best) = median(&mut layer_ns);
        let (added_median, _) = median(&mut added);
        println!(
            "tower/{name}: bare median {bare_median:.0} ns (best {bare_best:.0}), layer median \
             {layer_median:.0} ns (best {layer_best:.0}); the layer adds {added_median:.0} ns \
             (median of {rounds} paired rounds)"
        );
    }
}

fn main() {
    if let Some(rounds) = std::env::var("TOWER_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return interleaved(rounds);
    }
    let mut c = Criterion::default().configure_from_args();
    layer(&mut c);
    c.final_summary();
}
