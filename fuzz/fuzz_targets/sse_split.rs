//! Feeds arbitrary bytes to the SSE parser, whole and cut at arbitrary points, with small
//! limits, and checks the invariants: no panic, memory within the limits, and the same items
//! whatever the chunking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_affinity::sse::{Limits, Parser};

/// Everything observable about a parse, for comparison.
type Item = Result<(Vec<u8>, Vec<u8>, Vec<u8>), String>;

fn parse(limits: Limits, chunks: &[&[u8]]) -> (Vec<Item>, bool, Vec<u8>) {
    let mut parser = Parser::with_limits(limits);
    let mut items = Vec::new();
    for chunk in chunks {
        parser.push(Bytes::copy_from_slice(chunk));
        while let Some(item) = parser.next_event() {
            items.push(match item {
                Ok(event) => {
                    let data = event.data().into_owned();
                    assert_eq!(data.len(), event.data_len());
                    assert!(data.len() < limits.max_event_len(), "data within the event limit");
                    // Decoding never fails and keeps ASCII data as is.
                    let owned = event.to_event();
                    if data.is_ascii() {
                        assert_eq!(owned.data().as_bytes(), &data[..]);
                    }
                    Ok((event.event_type().to_vec(), data, event.last_event_id().to_vec()))
                }
                Err(skipped) => Err(skipped.to_string()),
            });
        }
        assert!(parser.buffered_len() <= limits.max_line_len() + limits.max_event_len());
    }
    let last_id = parser.last_event_id().to_vec();
    let dropped = parser.finish();
    (items, dropped, last_id)
}

fuzz_target!(|input: &[u8]| {
    // The first three bytes pick the limits and a chunk size; the rest is the stream.
    let [line, event, step, stream @ ..] = input else {
        return;
    };
    let limits = Limits::new()
        .with_max_line_len(usize::from(*line) + 1)
        .with_max_event_len(usize::from(*event) * 4 + 1);
    let whole = parse(limits, &[stream]);
    let step = usize::from(*step % 64) + 1;
    let chunks: Vec<&[u8]> = stream.chunks(step).collect();
    assert_eq!(parse(limits, &chunks), whole, "chunks of {step} bytes");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(parse(limits, &bytes), whole, "one-byte chunks");
});
