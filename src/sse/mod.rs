//! An incremental, WHATWG-conformant parser for server-sent events (`text/event-stream`).
//!
//! [`Parser`] is sans-IO: push the body's chunks as they arrive, in any size and split, and pull
//! events. Parsing is a `memchr` scan for line endings. Values stay in the chunks they came in,
//! except short pieces (under 256 bytes, or under a quarter of their chunk), which are copied
//! when the parser leaves their chunk or joins them to other pieces. Events come out as
//! [`EventRef`]s borrowing the parser, and are decoded into owned [`Event`]s only on request.
//! Memory is bounded ([`Limits`]): what the parser holds for an event stays within about four
//! times its data, and an event over the bounds is skipped and reported ([`Skipped`]) while the
//! stream goes on.
//!
//! With the `stream` feature, [`EventStream`] adapts a `futures_core::Stream` of body chunks.
//!
//! The rules are those of the WHATWG HTML standard, section 9.2.6 *Interpreting an event
//! stream*; [`Parser`]'s docs list them.

mod event;
mod parser;
#[cfg(feature = "stream")]
mod stream;

pub use event::{ByteStr, Event};
pub use parser::{DataChunks, EventRef, Limits, Parser, Skipped};
#[cfg(feature = "stream")]
#[cfg_attr(docsrs, doc(cfg(feature = "stream")))]
pub use stream::{EventStream, StreamError};
