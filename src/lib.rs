//! The routing core for MCP proxies: keeps every request of a stateful Model Context Protocol
//! conversation on the backend replica that owns it, and rejects, never re-hashes, a request
//! whose owner is gone.
//!
//! # What it is not
//!
//! `mcp-affinity` is sans-IO. It opens no sockets, reads no clock, spawns no tasks and picks
//! no runtime: the embedder (a proxy, a gateway, a load balancer) hands it request and response
//! heads, body chunks and the current time, and acts on its decisions. It does not parse HTTP
//! (it reads [`http`] parts you already have), and it observes bodies as they stream through
//! rather than buffering them. The bounded exceptions: with sealed ids, a legacy SSE response
//! is held up to its `endpoint` event (at most
//! [`max_observed_bytes`](router::RouterBuilder::max_observed_bytes) and the chunk that
//! crosses it), and the tower layer
//! keeps the body of a request it may place again, up to its `replay_limit`.
//!
//! # How it fits in a proxy
//!
//! ```text
//!   client ──request──► proxy ──route()──────────► Router ── Forward(exchange) / Reject
//!                         │                          ▲  │
//!                         │ forward to backend       │  └─ SessionTable (key → owner)
//!                         ▼                          │
//!   client ◄──response── proxy ◄── backend           │
//!                         └── on_response_head() ────┤  learn / forget / observe
//!                         └── ObservedBody ──────────┤  on_response_chunk(), on_exchange_end()
//! ```
//!
//! # Getting started: driving the router by hand
//!
//! ```
//! use std::time::Instant;
//! use http::{Request, Response, StatusCode};
//! use mcp_affinity::TenantId;
//! use mcp_affinity::router::{End, Routed, Router};
//!
//! let router = Router::builder().build();
//! let a = router.add_backend(TenantId::DEFAULT, "http://127.0.0.1:9001", 1).unwrap();
//! let b = router.add_backend(TenantId::DEFAULT, "http://127.0.0.1:9002", 1).unwrap();
//! let now = Instant::now();
//!
//! // 1. A legacy-era initialize carries no session: the router places it.
//! let (initialize, _) = Request::post("/mcp").body(()).unwrap().into_parts();
//! let Routed::Forward(mut exchange) = router.route(&initialize, now) else { unreachable!() };
//! let owner = exchange.backend();
//!
//! // 2. The backend's answer mints the session; the router learns it from the response only.
//! let (mut head, _) = Response::builder()
//!     .header("mcp-session-id", "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let _ = router.on_response_head(&mut exchange, &mut head, now);
//! router.on_exchange_end(exchange, End::Completed, now);
//!
//! // 3. Every later request of the conversation is pinned to that backend…
//! let (call, _) = Request::post("/mcp")
//!     .header("mcp-session-id", "5b7c0f6e-2d41-4c1e-9a3f-8e6d2b1a0c97")
//!     .header("mcp-protocol-version", "2025-11-25")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let Routed::Forward(exchange) = router.route(&call, now) else { unreachable!() };
//! assert_eq!(exchange.backend(), owner);
//! router.on_exchange_end(exchange, End::Completed, now);
//!
//! // 4. …until its owner goes away: then the client gets the 404 that makes it start over.
//! router.remove_backend(owner, now).unwrap();
//! let Routed::Reject(rejection) = router.route(&call, now) else { unreachable!() };
//! assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
//! # let _ = (a, b);
//! ```
//!
//! # Modules
//!
//! - [`router`]: the decision engine, [`router::Router`]; its documentation is the whole call
//!   protocol, era by era.
//! - [`table`]: the session table (affinity key → owning backend): the [`table::SessionTable`]
//!   trait, its sharded, bounded in-memory default, and a contract test suite.
//! - [`sse`]: an incremental, WHATWG-conformant server-sent events parser over `bytes`.
//! - [`seal`] (feature `seal`): sealed session ids for fleets of routers: the owner and the
//!   backend's id in an AES-256-GCM-SIV token any router holding the keys can open.
//! - [`body`]: [`body::ObservedBody`], an `http_body::Body` wrapper that drives an exchange as
//!   a response streams through.
//!
//! # Crate features
//!
//! - `tasks` (default): learning 2026-07-28 task ids from `CreateTaskResult` response bodies,
//!   with `serde_json`.
//! - `seal` (default): [`seal`], sealed session ids, with RustCrypto's `aes-gcm-siv`.
//! - `stream`: [`sse::EventStream`], a `futures_core::Stream` adapter.
//! - `tower` (default): [`tower::AffinityLayer`], the router as a `tower` layer around a
//!   forwarding service (with `tower-layer` and `tower-service`, no runtime).
//! - `tracing`: `tracing` events (target `mcp_affinity`) for what an operator wants to see:
//!   keys learned and ended (debug), rejections with their reason and tenant (debug; warn
//!   for capacity and availability), backends added, drained, removed (info), unhealthy or
//!   down (warn), back (info). No event is built when no subscriber listens.
//! - `test-util`: [`table::contract`], the checks any `SessionTable` implementation must pass.
//!
//! # Design
//!
//! - **Why sans-IO.** Proxies differ in runtime, HTTP stack and threading; the routing rules do
//!   not. Keeping I/O and time outside makes the core embeddable anywhere and testable with a
//!   manual clock, and makes every decision reproducible.
//! - **Why learn only from backends.** A session id is minted by the backend that holds the
//!   session. A key taken from a client is only ever looked up, so a client cannot poison the
//!   table or steer another client's conversation.
//! - **Why reject instead of re-hash.** The owner of an MCP session is decided *after* the
//!   routing decision (the backend mints the id), so no hash of the id can find it, and a
//!   replica that never saw a session can only fail it slowly or wrongly. A clear 404 (or 503
//!   with `Retry-After`) is the signal clients of each era act on.
//! - **Why bounded everywhere.** Keys, observed bytes, the table (per tenant too) and idle time
//!   all have documented limits; hitting one degrades to "stop observing" or a clear
//!   rejection, never to unbounded memory or a broken stream.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// A `tracing` event (feature `tracing`, target `mcp_affinity`); without the feature, nothing,
/// not even its arguments.
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::$level!(target: "mcp_affinity", $($arg)+);
        }
    }};
}

mod backend;
pub mod body;
pub mod router;
#[cfg(feature = "seal")]
#[cfg_attr(docsrs, doc(cfg(feature = "seal")))]
pub mod seal;
pub mod sse;
pub mod table;
mod tenant;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use backend::BackendId;
pub use tenant::TenantId;

// The README's example is compiled and run as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
