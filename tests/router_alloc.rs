//! Principle 6: routing a request of a known session allocates nothing. A counting global
//! allocator proves it for the whole round trip of a pinned request: route, response head,
//! end; and for placing a conversation start under every placement policy.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use mcp_affinity::TenantId;
use mcp_affinity::router::{End, HeadOutcome, Placement, Routed, Router};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the thread-locals are
// const-initialised `Cell`s, so touching them never allocates (no recursion).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this binary run one at a time: `tracing` keeps one interest per callsite for
/// the whole process, and a test routing with no subscriber while another listens can leave
/// the listener's callsites switched off.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn routing_a_request_of_a_known_session_allocates_nothing() {
    let _one = one_at_a_time();
    let router = Router::builder().build();
    for i in 0..4 {
        router
            .add_backend(TenantId::DEFAULT, &format!("b{i}"), 1)
            .unwrap();
    }
    let clock = Clock::new();
    let ids: Vec<String> = (0..100)
        .map(|i| format!("{i:08x}-77b0-4c1a-9d3e-2b8f6a0c5d11"))
        .collect();
    for id in &ids {
        initialize(&router, id, clock.now());
    }
    // The request and response heads come from the embedder's HTTP stack; build them first.
    let requests: Vec<_> = ids
        .iter()
        .map(|id| post("/mcp", &[("mcp-session-id", id.as_str()), LEGACY]))
        .collect();
    let mut responses: Vec<_> = ids.iter().map(|_| resp(200, &[SSE])).collect();
    // Warm up lazily initialised state (clock epochs, counter stripes).
    let _ = route_session(&router, &ids[0], clock.at(1));

    let mut pinned = 0;
    let allocations = allocations_in(|| {
        for round in 0..10 {
            for (request, response) in requests.iter().zip(&mut responses) {
                let now = clock.at(2 + round);
                let routed = router.route(request, now);
                let mcp_affinity::router::Routed::Forward(mut exchange) = routed else {
                    panic!("known session rejected");
                };
                let outcome = router.on_response_head(&mut exchange, response, now);
                assert!(matches!(outcome, HeadOutcome::Forward));
                router.on_exchange_end(exchange, End::Completed, now);
                pinned += 1;
            }
        }
    });
    assert_eq!(pinned, 1000);
    assert_eq!(
        allocations, 0,
        "allocations while routing {pinned} pinned requests"
    );
}

#[test]
fn placing_a_conversation_start_allocates_nothing_under_any_policy() {
    let _one = one_at_a_time();
    for placement in [
        Placement::LeastSessions,
        Placement::PowerOfTwoChoices,
        Placement::WeightedRoundRobin,
    ] {
        let router = Router::builder().placement(placement).build();
        for i in 0..5 {
            router
                .add_backend(TenantId::DEFAULT, &format!("b{i}"), 1)
                .unwrap();
        }
        let clock = Clock::new();
        let start = post("/mcp", &[]);
        let _ = router.route(&start, clock.at(1));
        let mut placed = 0;
        let allocations = allocations_in(|| {
            for round in 0..100 {
                let now = clock.at(2 + round);
                let Routed::Forward(exchange) = router.route(&start, now) else {
                    panic!("a start with ready backends is placed");
                };
                router.on_exchange_end(exchange, End::Aborted, now);
                placed += 1;
            }
        });
        assert_eq!(placed, 100);
        assert_eq!(
            allocations, 0,
            "{placement:?}: allocations placing {placed} starts"
        );
    }
}

#[test]
fn the_counting_allocator_does_count() {
    let _one = one_at_a_time();
    // Guards the test above against a counter that cannot see allocations.
    let n = allocations_in(|| {
        let v: Vec<u8> = Vec::with_capacity(64);
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}

/// With `tracing` on and a subscriber listening at `info`, the hot path still allocates
/// nothing: it emits no event, and the debug ones are not built.
#[cfg(feature = "tracing")]
#[test]
fn routing_allocates_nothing_with_a_subscriber_listening() {
    let _one = one_at_a_time();
    let recorder = recorder::Recorder::new(tracing::Level::INFO);
    tracing::subscriber::with_default(recorder.clone(), || {
        // Another test of this binary may have met the callsites first, with no subscriber:
        // have their interest asked again now that one listens.
        tracing::callsite::rebuild_interest_cache();
        let router = Router::builder().build();
        let _ = router.add_backend(TenantId::DEFAULT, "b", 1).unwrap();
        let clock = Clock::new();
        let id = "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97";
        initialize(&router, id, clock.now());
        let request = post("/mcp", &[("mcp-session-id", id), LEGACY]);
        let mut response = resp(200, &[SSE]);
        let _ = route_session(&router, id, clock.at(1));
        let allocations = allocations_in(|| {
            for round in 0..100 {
                let now = clock.at(2 + round);
                let mcp_affinity::router::Routed::Forward(mut exchange) =
                    router.route(&request, now)
                else {
                    panic!("known session rejected");
                };
                let _ = router.on_response_head(&mut exchange, &mut response, now);
                router.on_exchange_end(exchange, End::Completed, now);
            }
        });
        assert_eq!(allocations, 0);
    });
    // The subscriber did listen: adding the backend was an info event.
    let events = recorder.take();
    assert!(
        events.iter().any(|e| e.message == "backend added"),
        "{events:?}"
    );
}
