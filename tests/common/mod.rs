//! Builders for router scenario tests: request and response heads, a manual clock, and
//! one-line drivers for the call protocol.
#![allow(dead_code)] // each test file uses its own subset

pub mod sim_store;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, request, response};
use mcp_affinity::router::{ChunkOutcome, End, Exchange, HeadOutcome, Rejection, Routed, Router};
use mcp_affinity::table::SessionTable;

/// A manual clock: time moves only when the test says so.
pub struct Clock {
    start: Instant,
    now: Instant,
}

impl Clock {
    pub fn new() -> Self {
        #[allow(clippy::disallowed_methods)] // the one real reading a test starts from
        let start = Instant::now();
        Clock { start, now: start }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn advance(&mut self, by: Duration) -> Instant {
        self.now += by;
        self.now
    }

    pub fn at(&self, secs: u64) -> Instant {
        self.start + Duration::from_secs(secs)
    }
}

/// A request head.
pub fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

pub fn post(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    req(Method::POST, uri, headers)
}

pub fn get(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    req(Method::GET, uri, headers)
}

pub fn delete(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    req(Method::DELETE, uri, headers)
}

/// A response head.
pub fn resp(status: u16, headers: &[(&str, &str)]) -> response::Parts {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

pub const SSE: (&str, &str) = ("content-type", "text/event-stream");
pub const JSON: (&str, &str) = ("content-type", "application/json");
pub const MODERN: (&str, &str) = ("mcp-protocol-version", "2026-07-28");
pub const LEGACY: (&str, &str) = ("mcp-protocol-version", "2025-11-25");

#[track_caller]
pub fn forward(routed: Routed) -> Exchange {
    match routed {
        Routed::Forward(exchange) => exchange,
        Routed::Reject(rejection) => panic!("expected Forward, got {rejection}"),
        Routed::Lookup(lookup) => panic!("expected Forward, got {lookup:?}"),
    }
}

#[track_caller]
pub fn rejected(routed: Routed) -> Rejection {
    match routed {
        Routed::Forward(exchange) => panic!("expected Reject, got {exchange:?}"),
        Routed::Reject(rejection) => rejection,
        Routed::Lookup(lookup) => panic!("expected Reject, got {lookup:?}"),
    }
}

/// Routes a request, answers it with `status` and `headers`, feeds `body` in `chunks`, and
/// ends the exchange: the whole protocol for one request. Returns the exchange's head
/// outcome (`Replace` rejections included) and its backend.
pub fn exchange<T: SessionTable>(
    router: &Router<T>,
    request: &request::Parts,
    status: u16,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    now: Instant,
) -> (mcp_affinity::BackendId, HeadOutcome) {
    let mut ex = forward(router.route(request, now));
    let backend = ex.backend();
    let outcome = respond(router, &mut ex, status, headers, chunks, now);
    router.on_exchange_end(ex, End::Completed, now);
    (backend, outcome)
}

/// The response half of [`exchange`], leaving the exchange open (for streams).
pub fn respond<T: SessionTable>(
    router: &Router<T>,
    ex: &mut Exchange,
    status: u16,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    now: Instant,
) -> HeadOutcome {
    let mut head = resp(status, headers);
    let outcome = router.on_response_head(ex, &mut head, now);
    if let HeadOutcome::Observe = outcome {
        for chunk in chunks {
            if router.on_response_chunk(ex, &Bytes::copy_from_slice(chunk), now)
                == ChunkOutcome::Done
            {
                break;
            }
        }
    }
    outcome
}

/// Opens a Streamable HTTP session on whichever backend the router places it, minting `id`.
pub fn initialize<T: SessionTable>(
    router: &Router<T>,
    id: &str,
    now: Instant,
) -> mcp_affinity::BackendId {
    let (backend, outcome) = exchange(
        router,
        &post("/mcp", &[]),
        200,
        &[("mcp-session-id", id), SSE],
        &[],
        now,
    );
    assert!(matches!(outcome, HeadOutcome::Forward), "{outcome:?}");
    backend
}

/// The backend a request with this session goes to, or the rejection.
pub fn route_session<T: SessionTable>(
    router: &Router<T>,
    id: &str,
    now: Instant,
) -> Result<mcp_affinity::BackendId, Rejection> {
    match router.route(&post("/mcp", &[("mcp-session-id", id), LEGACY]), now) {
        Routed::Forward(ex) => {
            let backend = ex.backend();
            router.on_exchange_end(ex, End::Completed, now);
            Ok(backend)
        }
        Routed::Reject(rejection) => Err(rejection),
        Routed::Lookup(lookup) => panic!("no store here: {lookup:?}"),
    }
}

/// A `tracing` subscriber that records the events it is sent, up to a level (feature
/// `tracing`).
#[cfg(feature = "tracing")]
pub mod recorder {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    /// One event: its level, message and other fields (`name=value`, space-separated).
    #[derive(Clone, Debug)]
    pub struct Recorded {
        pub level: Level,
        pub message: String,
        pub fields: String,
    }

    /// Records every event at `max` or more severe.
    #[derive(Clone)]
    pub struct Recorder {
        max: Level,
        pub events: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Recorder {
        pub fn new(max: Level) -> Self {
            Recorder {
                max,
                events: Arc::default(),
            }
        }

        pub fn take(&self) -> Vec<Recorded> {
            std::mem::take(&mut self.events.lock().unwrap())
        }
    }

    struct Fields<'a>(&'a mut Recorded);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0.message, "{value:?}");
            } else {
                let _ = write!(self.0.fields, "{}={value:?} ", field.name());
            }
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.0.message.push_str(value);
            } else {
                let _ = write!(self.0.fields, "{}={value} ", field.name());
            }
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() <= self.max
        }

        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            Some(self.max.into())
        }

        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }

        fn record(&self, _: &Id, _: &Record<'_>) {}

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &Event<'_>) {
            let mut recorded = Recorded {
                level: *event.metadata().level(),
                message: String::new(),
                fields: String::new(),
            };
            event.record(&mut Fields(&mut recorded));
            self.events.lock().unwrap().push(recorded);
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }
}

/// A principal from the `Authorization` header: a stand-in fingerprint (FNV-1a) of its
/// value; embedders would use a keyed hash.
pub fn bearer(req: &request::Parts) -> Option<mcp_affinity::table::Principal> {
    let token = req.headers.get("authorization")?.as_bytes();
    let hash = token.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x1000_0000_01b3)
    });
    Some(mcp_affinity::table::Principal::new(hash))
}

/// An operator key: the `Mcp-Param-Workspace` header.
pub fn workspace(req: &request::Parts) -> Option<&[u8]> {
    req.headers.get("mcp-param-workspace").map(|v| v.as_bytes())
}

/// A 2026-07-28 tool call naming workspace `ws` (the operator key [`workspace`] reads).
pub fn ws_call(ws: &str) -> request::Parts {
    post(
        "/mcp",
        &[
            MODERN,
            ("mcp-method", "tools/call"),
            ("mcp-name", "edit"),
            ("mcp-param-workspace", ws),
        ],
    )
}

/// The id of `router`'s backend named `name`.
pub fn id_of(router: &Router, name: &str) -> mcp_affinity::BackendId {
    router
        .backends()
        .into_iter()
        .find(|b| &*b.name == name)
        .unwrap()
        .id
}

/// The name of `router`'s backend `id`.
pub fn name_of<T: SessionTable>(router: &Router<T>, id: mcp_affinity::BackendId) -> String {
    router
        .backends()
        .into_iter()
        .find(|b| b.id == id)
        .unwrap()
        .name
        .to_string()
}

/// A small deterministic generator (xorshift*) for the randomised drivers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, all: &'a [T]) -> &'a T {
        &all[self.below(all.len())]
    }
}
