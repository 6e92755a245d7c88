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
//!
//! # Crate features
//!
//! - `stream`: [`sse::EventStream`], a `futures_core::Stream` adapter.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod sse;

// The README's example is compiled and run as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
