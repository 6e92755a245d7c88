//! What an event's data costs in memory, whatever its lines and chunking: a global allocator
//! that counts the bytes in use measures an event held just under `max_event_len`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use bytes::Bytes;
use mcp_affinity::sse::{Limits, Parser};

struct Live;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a static
// atomic, so counting never allocates.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Live = Live;

/// The tests of this binary run one at a time: the counter is the process's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const BOUND: usize = 1 << 20;

/// Feeds `line` again and again, in chunks of `chunk` bytes, as one event whose data stays just
/// under the bound (no blank line ends it), and returns the bytes the parser holds for it,
/// over the bound.
fn held_per_bound_byte(line: &[u8], counted: usize, chunk: usize) -> f64 {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lines = BOUND / counted - 1;
    let mut stream = Vec::with_capacity(lines * line.len());
    for _ in 0..lines {
        stream.extend_from_slice(line);
    }
    let mut parser = Parser::with_limits(Limits::new().with_max_event_len(BOUND));
    let before = LIVE.load(Relaxed);
    for piece in stream.chunks(chunk) {
        // Each chunk is allocated here and the parser's alone once pushed: what it keeps of
        // it counts.
        parser.push(Bytes::copy_from_slice(piece));
        if let Some(event) = parser.next_event() {
            panic!("no event ends: {:?}", event.map(|e| e.data_len()));
        }
    }
    let held = LIVE.load(Relaxed) - before;
    drop(parser);
    held as f64 / BOUND as f64
}

/// An event of many short `data:` lines costs a small multiple of the bound: the short values
/// and the LFs that join them are copied together, not kept a piece each.
#[test]
fn many_short_data_lines_cost_a_small_multiple_of_the_bound() {
    for (line, counted) in [
        (&b"data:x\n"[..], 2),
        (b"data:\n", 1),
        (b"data: 0123456789\n", 11),
    ] {
        for chunk in [4096, 16 * 1024] {
            let ratio = held_per_bound_byte(line, counted, chunk);
            eprintln!(
                "{:?} in {chunk}-byte chunks: {ratio:.2}",
                String::from_utf8_lossy(line)
            );
            assert!(
                ratio < 3.0,
                "{:?} in {chunk}-byte chunks: {ratio:.1} bytes held per byte of the bound",
                String::from_utf8_lossy(line)
            );
        }
    }
}

/// Lines long enough to be shared with their chunk rather than copied do not keep chunks alive
/// for a small part of each: one such line per chunk, padded with comments, is copied too.
#[test]
fn long_data_lines_padded_with_comments_do_not_pin_their_chunks() {
    let mut line = b"data: ".to_vec();
    line.extend(std::iter::repeat_n(b'v', 300));
    line.push(b'\n');
    line.push(b':');
    line.extend(std::iter::repeat_n(b'c', 16 * 1024 - line.len() - 1));
    line.push(b'\n');
    assert_eq!(line.len(), 16 * 1024);
    let ratio = held_per_bound_byte(&line, 301, 16 * 1024);
    eprintln!("one 300-byte value per padded 16 KiB chunk: {ratio:.2}");
    assert!(ratio < 5.0, "{ratio:.1} bytes held per byte of the bound");
}
