//! The routing core for MCP proxies: keeps every request of a stateful conversation on the
//! backend replica that owns it.
//!
//! `mcp-affinity` is sans-IO: it opens no sockets, reads no clock and spawns no tasks. The
//! embedder hands it request and response heads and body chunks, and the current time where
//! state can expire.
//!
//! # Modules
//!
//! - [`sse`]: an incremental, WHATWG-conformant server-sent events parser over `bytes`.
//! - [`router`]: the routing decision engine, [`router::Router`]; start there.
//! - [`body`]: [`body::ObservedBody`], an `http_body::Body` wrapper that drives an exchange as
//!   a response streams through.
//! - [`table`]: the session table (affinity key → owning backend): the [`table::SessionTable`]
//!   trait, its sharded, bounded in-memory default, and a contract test suite.
//!
//! # Crate features
//!
//! - `tasks` (default): learning 2026-07-28 task ids from `CreateTaskResult` response bodies,
//!   with `serde_json`.
//! - `stream`: [`sse::EventStream`], a `futures_core::Stream` adapter.
//! - `test-util`: [`table::contract`], the checks any `SessionTable` implementation must pass.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
pub mod body;
pub mod router;
pub mod sse;
pub mod table;
mod tenant;

pub use backend::BackendId;
pub use tenant::TenantId;

// The README's example is compiled and run as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
