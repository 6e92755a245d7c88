//! Redis for [`mcp-affinity`](mcp_affinity)'s shared store: the routers of a fleet share the
//! MCP sessions, tasks and operator keys they learn through one Redis (or Valkey), so that
//! any router sends a conversation to the replica that owns it.
//!
//! The core is sans-IO: it answers [`Routed::Lookup`](mcp_affinity::router::Routed::Lookup)
//! for a key it does not know and queues [`StoreWrite`](mcp_affinity::router::store::StoreWrite)s
//! for what it learns and forgets (the protocol is in [`mcp_affinity::router::store`]). This
//! crate does that I/O on Tokio with the [`redis`](https://docs.rs/redis) crate: lookups on the
//! request's path ([`RedisStore::resolve`]), and a background task for the rest
//! ([`RedisStore::spawn_sync`]).
//!
//! # What it does not do
//!
//! - It does not make Redis highly available: run Redis the way you run it (a replica and
//!   Sentinel, a managed service). What it does is keep routing through an outage (below).
//! - It does not speak Redis Cluster: every key of a fleet lives on one server.
//! - It puts no `redis` type in its API: you hand it a URL.
//!
//! # The flow
//!
//! ```text
//!  request ──► router.route ──► Forward / Reject ─────────────────────────► (as usual)
//!                   │
//!                   └─► Lookup ──► store.resolve: GET key ──► router.on_lookup ──► Forward / Reject
//!                                  (lookup timeout; open circuit: at once)
//!
//!  router learns / forgets / loses an owner ──► write queue (bounded, in the router)
//!                                                   │
//!  sync task ◄── take_store_writes(batch) ──────────┘
//!     ├─ one pipeline per batch: SET NX PX GET · PEXPIRE · Lua compare-and-delete · Lua keep-greatest
//!     │      └─ taken binds ──► router.on_bind_taken (the router adopts the winner)
//!     ├─ every lost_poll: SET {prefix}:epoch NX GET (restart marker) · MGET lost records ──► router.on_lost
//!     └─ reseed (marker changed, outage over, writes dropped) ──► router.reseed_store ──► SET NX …
//! ```
//!
//! # Example: a fleet on Redis
//!
//! Every router of the fleet is built the same way: the same prefix, the same backend names;
//! each runs one [`RedisStore`] and one sync task.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::{Instant, SystemTime, UNIX_EPOCH};
//! use mcp_affinity::TenantId;
//! use mcp_affinity::router::{NewBackend, Routed, Router, SharedStore};
//! use mcp_affinity_redis::{RedisStore, RedisStoreConfig};
//!
//! # async fn serve(request: http::request::Parts) -> Result<(), Box<dyn std::error::Error>> {
//! let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
//! let router = Arc::new(
//!     Router::builder()
//!         .shared_store(SharedStore::new("mcpa", Instant::now(), unix))
//!         .build(),
//! );
//! // The same names on every router of the fleet.
//! router.add(NewBackend::new(TenantId::DEFAULT, "http://10.0.0.7:9001").name("a"))?;
//! router.add(NewBackend::new(TenantId::DEFAULT, "http://10.0.0.8:9001").name("b"))?;
//!
//! let store = RedisStore::connect("redis://10.0.0.2:6379", RedisStoreConfig::default()).await?;
//! let sync = store.spawn_sync(router.clone());
//!
//! // Per request: route, and look up in Redis what this router does not know.
//! let routed = router.route(&request, Instant::now());
//! match store.resolve(&router, routed).await {
//!     Routed::Forward(exchange) => { /* forward to exchange.backend(), as without a store */ }
//!     Routed::Reject(rejection) => { /* answer rejection.to_response() */ }
//!     Routed::Lookup(_) => unreachable!("resolve answers every lookup"),
//! }
//!
//! // On shutdown: what the router learned last is written, within the grace.
//! sync.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # The outage policy
//!
//! | the store is | lookups (a key this router does not know) | keys this router knows | new conversations | writes |
//! |---|---|---|---|---|
//! | slow (no answer within [`lookup_timeout`](RedisStoreConfig::lookup_timeout)) | 503 + `Retry-After` ([`Reason::StoreUnavailable`](mcp_affinity::router::Reason::StoreUnavailable)), never 404, never a guess | routed | placed and learned | queued in the router |
//! | failing ([`breaker_threshold`](RedisStoreConfig::breaker_threshold) failures in a row) | 503 at once: the circuit is open for [`breaker_cool_down`](RedisStoreConfig::breaker_cool_down), then one call probes | routed | placed | queued (bounded; past it dropped, counted) |
//! | back | answered; a key it lacks is 503 ([`Unavailable::Recovering`]) for [`recovery_grace`](RedisStoreConfig::recovery_grace) after a call of this router last lost its connection or met the open circuit (a lone timeout starts no grace; other routers' queued writes are on their way), then 404 | routed | placed | the queue drains; the router's bindings are reseeded (set-if-absent) |
//! | back **empty** (restarted without persistence) | answered (keys learned before: by reseeding); a key it lacks is 503 ([`Unavailable::Changed`]: each lookup reads the restart marker with its key) until this router's sync task has seen the change, then for the router's [`restart_warmup`](mcp_affinity::router::SharedStore::restart_warmup) | routed | placed | reseeded as soon as the restart marker is seen missing |
//!
//! A connection killed under a call fails that call (one 503 at most); the connection is
//! made again in the background and the next call uses it.
//!
//! # Store layout
//!
//! The core's keys (`{prefix}:b:…` bindings, `{prefix}:lost:…` lost records: see
//! [`mcp_affinity::router::store`]) and one of this crate's: `{prefix}:epoch`, a random value
//! set when missing, with no expiry; a router that finds it missing or changed, or finds
//! another server answering (its `run_id` changed: a restart from a snapshot, a failover),
//! knows the store lost data and writes its bindings again, answering misses with 503 for
//! its warm-up meanwhile. A router whose first look finds the store empty takes it for a new
//! one: if the store had come back empty just before that router started, the router answers
//! 404 to keys that the others have not written back yet (for about one `lost_poll`).
//!
//! # Requirements
//!
//! Redis 7.0 or later (`SET … NX GET`), or Valkey; the scripts are loaded with `SCRIPT LOAD`
//! and run with `EVALSHA` (loaded again after a restart). A Tokio runtime.
//!
//! # Design
//!
//! - **Bounded everywhere.** Every call has a timeout ([`RedisStoreConfig`] lists every bound
//!   with its default); the write queue's bound is the router's; a failed batch is held and
//!   sent again, and nothing more is taken from the router until it is written.
//! - **Idempotent writes.** Bind-if-absent, refresh, compare-and-delete and keep-greatest can
//!   each be performed twice: a batch whose answer was lost is simply sent again.
//! - **A breaker, not retries on the request path.** A lookup gets one try within its timeout;
//!   when the store keeps failing, lookups stop waiting for it at all.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod circuit;
mod config;
mod error;
mod in_flight;
mod metrics;
mod store;
mod sync;

pub use circuit::Circuit;
pub use config::RedisStoreConfig;
pub use error::{Error, Unavailable};
pub use metrics::{Errors, Latency, StoreMetrics};
pub use store::{Answer, Performed, RedisStore};
pub use sync::SyncHandle;
