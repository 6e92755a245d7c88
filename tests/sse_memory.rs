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

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const BOUND: usize = 1 << 20;

/// Feeds `line` again and again, in chunks of `chunk` bytes, as one event whose data stays just
/// under the bound (no blank line ends it), and returns the bytes the parser holds for it,
/// over the bound.
fn held_per_bound_byte(line: &[u8], counted: usize, chunk: usize) -> f64 {
    let _one = one_at_a_time();
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

/// Pushes `chunks` (each copied into its own allocation), drains and drops every event, and
/// returns (bytes the parser holds afterwards, number of events, number of skips).
fn held_after(limits: Limits, chunks: &[Vec<u8>]) -> (isize, usize, usize) {
    let mut parser = Parser::with_limits(limits);
    let (mut events, mut skips) = (0, 0);
    let before = LIVE.load(Relaxed);
    for c in chunks {
        parser.push(Bytes::copy_from_slice(c));
        while let Some(item) = parser.next_event() {
            match item {
                Ok(_) => events += 1,
                Err(_) => skips += 1,
            }
        }
    }
    let after = LIVE.load(Relaxed) - before;
    drop(parser);
    (after, events, skips)
}

/// A line fed in `piece`-byte chunks (no chunk holds an end of line except the last one).
fn in_pieces(out: &mut Vec<Vec<u8>>, line: &[u8], piece: usize) {
    for c in line.chunks(piece) {
        out.push(c.to_vec());
    }
}

// Found by an attacking helper: copies of lines split across chunks shared one buffer, and a
// kept piece kept the whole buffer (earlier lines included) alive; the buffers were not
// released after a big line or event.

/// One event of many 300-byte `data:` lines, each fed in two ~150-byte chunks (so it is
/// assembled from copies), each after a long comment line fed in 200-byte chunks (copied
/// too). A data piece must not keep the comment's bytes alive (it held 302x the bound).
#[test]
fn data_pieces_assembled_in_line_tail_pin_the_comments_before_them() {
    let _one = one_at_a_time();
    let bound = 64 * 1024;
    let limits = Limits::new()
        .with_max_line_len(bound)
        .with_max_event_len(bound);
    let mut comment = vec![b':'];
    comment.extend(std::iter::repeat_n(b'c', bound - 100));
    comment.push(b'\n');
    let mut data = b"data: ".to_vec();
    data.extend(std::iter::repeat_n(b'v', 300));
    data.push(b'\n');
    let lines = bound / 301 - 1;
    let mut chunks = Vec::new();
    for _ in 0..lines {
        in_pieces(&mut chunks, &comment, 200);
        in_pieces(&mut chunks, &data, 160);
    }
    let (bytes, events, skips) = held_after(limits, &chunks);
    let ratio = bytes as f64 / bound as f64;
    assert_eq!((events, skips), (0, 0));
    assert!(
        ratio < 5.0,
        "{ratio:.1} bytes held per byte of max_event_len"
    );
}

/// A 3-byte id assembled from copies right after a long comment line must not keep the
/// comment's buffer alive as the last event ID (it held 2.2 MiB while idle).
#[test]
fn a_short_id_after_a_long_split_comment_pins_it_while_idle() {
    let _one = one_at_a_time();
    let bound = 1 << 20;
    let limits = Limits::new().with_max_line_len(bound);
    let mut chunks = Vec::new();
    let mut comment = vec![b':'];
    comment.extend(std::iter::repeat_n(b'c', bound - 1000));
    comment.push(b'\n');
    in_pieces(&mut chunks, &comment, 200);
    chunks.push(b"id: abc".to_vec());
    chunks.push(b"\n\n".to_vec());
    // A second long comment: the buffer of copies cannot reuse a pinned allocation.
    in_pieces(&mut chunks, &comment, 200);
    for _ in 0..1000 {
        chunks.push(b"data: small\n\n".to_vec());
    }
    let (bytes, events, _) = held_after(limits, &chunks);
    assert_eq!(events, 1000);
    assert!(
        bytes < 64 * 1024,
        "{bytes} bytes held by an idle parser whose last event ID is 3 bytes"
    );
}

/// After one big event of many short data lines, a parser that goes on with small events
/// lets the big buffer go (it kept 1 MiB when little of its capacity was left past the data).
#[test]
fn data_tail_is_released_after_a_big_event() {
    let _one = one_at_a_time();
    let mut worst = (0isize, 0usize);
    for n in [
        (1usize << 19) - 40,
        (1 << 19) - 2000,
        (1 << 19) - 3000,
        1 << 18,
        300_000,
    ] {
        // n data lines "data:x\n" -> data_tail holds 2n-1 bytes.
        let mut stream = Vec::new();
        for _ in 0..n {
            stream.extend_from_slice(b"data:x\n");
        }
        stream.extend_from_slice(b"\n");
        let mut chunks: Vec<Vec<u8>> = stream.chunks(4096).map(<[u8]>::to_vec).collect();
        for _ in 0..100 {
            chunks.push(b"data: a\ndata: b\n\n".to_vec());
        }
        let (bytes, events, _) = held_after(Limits::new(), &chunks);
        assert_eq!(events, 101, "the big event and the small ones");
        if bytes > worst.0 {
            worst = (bytes, n);
        }
    }
    assert!(
        worst.0 < 64 * 1024,
        "idle parser holds {} bytes after an event of {} lines",
        worst.0,
        worst.1
    );
}

/// A long line fed in tiny chunks grows the buffer of copies; the parser lets it go afterwards
/// (it kept 1 MiB).
#[test]
fn line_tail_is_released_after_a_long_split_line() {
    let _one = one_at_a_time();
    let mut chunks = Vec::new();
    let mut comment = vec![b':'];
    comment.extend(std::iter::repeat_n(b'c', (1 << 20) - 1000));
    comment.push(b'\n');
    in_pieces(&mut chunks, &comment, 200);
    for _ in 0..100 {
        chunks.push(b"data: small\n\n".to_vec());
    }
    let (bytes, events, _) = held_after(Limits::new(), &chunks);
    assert_eq!(events, 100);
    assert!(bytes < 64 * 1024, "{bytes} bytes held by an idle parser");
}
