//! The WHATWG "interpreting an event stream" rules, one test per rule.
//!
//! Each test feeds the parser by hand; the property tests in `sse_properties.rs` check that
//! any chunking gives the same answers.

use std::time::Duration;

use bytes::Bytes;
use mcp_affinity::sse::{Event, Limits, Parser, Skipped};

/// Feeds `chunks` one by one, draining after each, and returns every item plus whether
/// `finish` dropped an unfinished event.
fn run_with(parser: &mut Parser, chunks: &[&[u8]]) -> (Vec<Result<Event, Skipped>>, bool) {
    let mut out = Vec::new();
    for chunk in chunks {
        parser.push(Bytes::copy_from_slice(chunk));
        while let Some(item) = parser.next_event() {
            out.push(item.map(|event| event.to_event()));
        }
    }
    let dropped = parser.finish();
    (out, dropped)
}

fn events(chunks: &[&[u8]]) -> Vec<Event> {
    run_with(&mut Parser::new(), chunks)
        .0
        .into_iter()
        .map(|item| item.expect("no event skipped"))
        .collect()
}

fn data(chunks: &[&[u8]]) -> Vec<String> {
    events(chunks)
        .iter()
        .map(|e| e.data().as_str().to_owned())
        .collect()
}

// --- Decoding -------------------------------------------------------------------------------

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    // A lone continuation byte, a truncated 3-byte sequence, and an overlong encoding.
    assert_eq!(
        data(&[b"data: a\x80b\xE2\x82c\xC0\xAFd\n\n"]),
        ["a\u{FFFD}b\u{FFFD}c\u{FFFD}\u{FFFD}d"]
    );
}

#[test]
fn invalid_utf8_in_field_name_does_not_match_a_known_field() {
    assert!(events(&[b"dat\xFF: x\n\n"]).is_empty());
}

#[test]
fn character_split_across_chunks_decodes_correctly() {
    // U+20AC EURO SIGN is E2 82 AC; U+1F600 is F0 9F 98 80.
    assert_eq!(
        data(&[b"data: \xE2", b"\x82", b"\xAC \xF0\x9F", b"\x98\x80\n\n"]),
        ["\u{20AC} \u{1F600}"]
    );
}

#[test]
fn truncated_character_before_line_end_is_one_replacement() {
    assert_eq!(data(&[b"data: \xF0\x9F\x98\n\n"]), ["\u{FFFD}"]);
}

#[test]
fn invalid_utf8_after_a_long_ascii_run_is_replaced() {
    // The owned path checks ASCII in 64-byte blocks before it looks at UTF-8 sequences.
    let ascii = "a".repeat(100);
    let input = [b"data: ", ascii.as_bytes(), b"\xFFb\n\n"].concat();
    assert_eq!(data(&[&input]), [format!("{ascii}\u{FFFD}b")]);
}

#[test]
fn multibyte_characters_across_ascii_block_boundaries_decode_correctly() {
    // U+20AC EURO SIGN (3 bytes) starting at every offset around the 64-byte block edge.
    for lead in 60..68 {
        let text = format!("{}\u{20AC}{}", "a".repeat(lead), "b".repeat(70));
        let input = format!("data: {text}\n\n");
        assert_eq!(
            data(&[input.as_bytes()]),
            [text],
            "{lead} ASCII bytes first"
        );
    }
}

#[test]
fn data_in_pieces_with_invalid_utf8_is_replaced_when_joined() {
    // Two data lines are kept in pieces, then joined and decoded.
    let a = "a".repeat(300);
    let input = format!("data: {a}\u{20AC}{a}\ndata: {a}\n\n");
    let mut input = input.into_bytes();
    let bad = 6 + 300 + 1; // the second byte of the euro sign
    input[bad] = b'x';
    let chunks: Vec<&[u8]> = input.chunks(128).collect();
    assert_eq!(data(&chunks), [format!("{a}\u{FFFD}x\u{FFFD}{a}\n{a}")]);
}

#[test]
fn data_in_pieces_with_characters_split_across_chunks_decodes_whole() {
    let a = "a".repeat(300);
    let text = format!("{a}\u{1F600}{a}\u{E9}");
    let input = format!("data: {text}\r\ndata: {a}\r\n\r\n");
    // Every split of the emoji and of the CRLF, in chunks large enough to be sliced.
    for cut in 300..320 {
        let (first, rest) = input.as_bytes().split_at(cut);
        let (second, third) = rest.split_at(320);
        assert_eq!(
            data(&[first, second, third]),
            [format!("{text}\n{a}")],
            "cut at {cut}"
        );
    }
}

// --- Byte order mark ------------------------------------------------------------------------

#[test]
fn leading_bom_is_stripped() {
    assert_eq!(data(&[b"\xEF\xBB\xBFdata: x\n\n"]), ["x"]);
}

#[test]
fn leading_bom_arriving_one_byte_at_a_time_is_stripped() {
    assert_eq!(data(&[b"\xEF", b"\xBB", b"\xBF", b"data: x\n\n"]), ["x"]);
}

#[test]
fn empty_chunks_do_not_settle_the_bom() {
    assert_eq!(
        data(&[b"", b"\xEF", b"", b"\xBB", b"", b"\xBFdata: x\n\n"]),
        ["x"]
    );
}

#[test]
fn second_bom_is_content() {
    // The first BOM is stripped; the second makes the field name "\u{FEFF}data", unknown.
    assert!(events(&[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"]).is_empty());
    assert_eq!(
        data(&[b"\xEF\xBB\xBFdata: \xEF\xBB\xBFx\n\n"]),
        ["\u{FEFF}x"]
    );
}

#[test]
fn bom_after_the_first_line_is_content() {
    let got = events(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
    assert_eq!(
        got.len(),
        1,
        "the line after the BOM is the unknown field \\u{{FEFF}}data"
    );
}

#[test]
fn partial_bom_followed_by_other_bytes_is_content() {
    // EF BB then 'd': not a BOM, so the held bytes are decoded as content (one U+FFFD for the
    // truncated sequence) and become part of the first line's field name.
    let mut parser = Parser::new();
    let (items, _) = run_with(&mut parser, &[b"\xEF", b"\xBB", b"data: x\n\ndata: y\n\n"]);
    let data: Vec<_> = items
        .into_iter()
        .map(|e| e.unwrap().data().to_string())
        .collect();
    assert_eq!(data, ["y"]);
    // With a field name of its own, the held bytes show up in the value.
    assert_eq!(data_of(b"data:\xEF\xBB"), ["\u{FFFD}"]);
}

fn data_of(line: &[u8]) -> Vec<String> {
    let mut input = line.to_vec();
    input.extend_from_slice(b"\n\n");
    data(&[&input])
}

// --- Line endings ---------------------------------------------------------------------------

#[test]
fn lines_end_with_lf() {
    assert_eq!(data(&[b"data: a\ndata: b\n\n"]), ["a\nb"]);
}

#[test]
fn lines_end_with_crlf() {
    assert_eq!(data(&[b"data: a\r\ndata: b\r\n\r\n"]), ["a\nb"]);
}

#[test]
fn lines_end_with_cr() {
    assert_eq!(data(&[b"data: a\rdata: b\r\r"]), ["a\nb"]);
}

#[test]
fn mixed_line_endings_in_one_stream() {
    assert_eq!(data(&[b"data: a\rdata: b\r\ndata: c\n\r\n"]), ["a\nb\nc"]);
}

#[test]
fn crlf_split_across_chunks_is_one_line_ending() {
    // If the LF counted as a second line ending, "a" would be dispatched alone.
    assert_eq!(
        data(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]),
        ["a\nb"]
    );
}

#[test]
fn cr_at_end_of_chunk_completes_the_event_at_once() {
    let mut parser = Parser::new();
    parser.push(Bytes::from_static(b"data: x\r\n\r"));
    let event = parser
        .next_event()
        .expect("dispatched without waiting for the next byte");
    assert_eq!(&*event.unwrap().data(), b"x");
    parser.push(Bytes::from_static(b"\ndata: y\n\n"));
    let event = parser
        .next_event()
        .expect("the swallowed LF is not a blank line");
    assert_eq!(&*event.unwrap().data(), b"y");
    assert!(parser.next_event().is_none());
}

#[test]
fn lf_after_cr_is_swallowed_only_once() {
    // CR LF LF: the first LF belongs to the CR, the second is a blank line.
    assert_eq!(data(&[b"data: a\r", b"\n", b"\n"]), ["a"]);
}

// --- Fields and comments --------------------------------------------------------------------

#[test]
fn comment_lines_are_ignored() {
    assert_eq!(
        data(&[b": keep-alive\ndata: a\n:another\ndata: b\n\n"]),
        ["a\nb"]
    );
    // A comment alone is not an event, and a comment does not end one.
    assert!(events(&[b": ping\n\n"]).is_empty());
}

#[test]
fn field_is_split_at_the_first_colon() {
    assert_eq!(data(&[b"data: a:b: c\n\n"]), ["a:b: c"]);
}

#[test]
fn exactly_one_leading_space_is_removed_from_the_value() {
    assert_eq!(data(&[b"data:  two\n\n"]), [" two"]);
    assert_eq!(data(&[b"data:none\n\n"]), ["none"]);
    assert_eq!(data(&[b"data:\tx\n\n"]), ["\tx"]);
}

#[test]
fn line_without_colon_is_a_field_with_an_empty_value() {
    assert_eq!(data(&[b"data\n\n"]), [""]);
    assert_eq!(data(&[b"data\ndata\n\n"]), ["\n"]);
}

#[test]
fn field_names_are_case_sensitive_and_exact() {
    assert!(events(&[b"Data: x\n\n"]).is_empty());
    assert!(events(&[b"data : x\n\n"]).is_empty());
    assert!(events(&[b" data: x\n\n"]).is_empty());
}

#[test]
fn unknown_fields_are_ignored() {
    assert_eq!(data(&[b"foo: bar\ndata: x\nretryx: 5\n\n"]), ["x"]);
}

// --- data -----------------------------------------------------------------------------------

#[test]
fn data_lines_are_joined_with_lf() {
    assert_eq!(data(&[b"data: a\ndata: b\ndata: c\n\n"]), ["a\nb\nc"]);
}

#[test]
fn only_the_last_trailing_lf_is_removed() {
    assert_eq!(data(&[b"data: a\ndata:\n\n"]), ["a\n"]);
    assert_eq!(data(&[b"data:\n\n"]), [""]);
}

#[test]
fn block_without_data_is_not_dispatched() {
    assert!(events(&[b"event: ping\nid: 1\nretry: 5\n\n"]).is_empty());
}

#[test]
fn blank_lines_alone_dispatch_nothing() {
    assert!(events(&[b"\n\n\r\n\r\r"]).is_empty());
}

// --- event ----------------------------------------------------------------------------------

#[test]
fn event_type_defaults_to_message() {
    let got = events(&[b"data: x\n\n"]);
    assert_eq!(got[0].event_type(), "message");
}

#[test]
fn event_field_sets_the_type_of_its_block() {
    let got = events(&[b"event: endpoint\ndata: /m?x=1\n\n"]);
    assert_eq!(got[0].event_type(), "endpoint");
}

#[test]
fn event_type_is_reset_at_every_blank_line() {
    let got = events(&[b"event: a\ndata: 1\n\ndata: 2\n\nevent: b\n\ndata: 3\n\n"]);
    let types: Vec<_> = got.iter().map(|e| e.event_type().to_string()).collect();
    assert_eq!(types, ["a", "message", "message"]);
}

#[test]
fn empty_event_type_means_message() {
    let got = events(&[b"event\ndata: x\n\nevent:\ndata: y\n\n"]);
    assert_eq!(got[0].event_type(), "message");
    assert_eq!(got[1].event_type(), "message");
}

#[test]
fn last_event_field_of_a_block_wins() {
    let got = events(&[b"event: a\nevent: b\ndata: x\n\n"]);
    assert_eq!(got[0].event_type(), "b");
}

#[test]
fn explicit_message_type_equals_the_default() {
    let got = events(&[b"event: message\ndata: a\n\ndata: b\n\n"]);
    assert_eq!(got[0].event_type(), "message");
    assert_eq!(got[0].event_type(), got[1].event_type());
}

// --- id -------------------------------------------------------------------------------------

#[test]
fn id_is_reported_with_the_event() {
    let got = events(&[b"id: 7\ndata: x\n\n"]);
    assert_eq!(got[0].last_event_id(), "7");
}

#[test]
fn last_event_id_persists_across_events() {
    let got = events(&[b"id: 7\ndata: a\n\ndata: b\n\n"]);
    assert_eq!(got[1].last_event_id(), "7");
}

#[test]
fn id_of_a_block_without_data_is_still_committed() {
    let mut parser = Parser::new();
    let (items, _) = run_with(&mut parser, &[b"id: 9\n\ndata: x\n\n"]);
    assert_eq!(items[0].as_ref().unwrap().last_event_id(), "9");
    assert_eq!(parser.last_event_id(), b"9");
}

#[test]
fn id_is_committed_only_at_the_blank_line() {
    let mut parser = Parser::new();
    parser.push(Bytes::from_static(b"id: 1\ndata: a\n\nid: 2\n"));
    assert!(parser.next_event().is_some());
    assert!(parser.next_event().is_none());
    assert_eq!(parser.last_event_id(), b"1");
    parser.push(Bytes::from_static(b"\n"));
    assert!(parser.next_event().is_none());
    assert_eq!(parser.last_event_id(), b"2");
}

#[test]
fn id_containing_nul_is_ignored() {
    let got = events(&[b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"]);
    assert_eq!(got[1].last_event_id(), "1");
}

#[test]
fn empty_id_resets_the_last_event_id() {
    let got = events(&[b"id: 1\ndata: a\n\nid\ndata: b\n\nid:\ndata: c\n\n"]);
    assert_eq!(got[0].last_event_id(), "1");
    assert_eq!(got[1].last_event_id(), "");
    assert_eq!(got[2].last_event_id(), "");
}

#[test]
fn id_keeps_inner_spaces() {
    let got = events(&[b"id:  a b \ndata: x\n\n"]);
    assert_eq!(got[0].last_event_id(), " a b ");
}

// --- retry ----------------------------------------------------------------------------------

#[test]
fn retry_with_ascii_digits_sets_the_reconnection_time() {
    let mut parser = Parser::new();
    run_with(&mut parser, &[b"retry: 3000\n\n"]);
    assert_eq!(
        parser.reconnection_time(),
        Some(Duration::from_millis(3000))
    );
}

#[test]
fn retry_with_anything_but_digits_is_ignored() {
    for bad in [
        &b"retry: 10a\n"[..],
        b"retry: -1\n",
        b"retry: 1.5\n",
        b"retry: +5\n",
        b"retry:  5\n",
        b"retry: 5 \n",
        b"retry:\n",
        b"retry\n",
        b"retry: \xD9\xA3\n", // ARABIC-INDIC DIGIT THREE is not an ASCII digit
    ] {
        let mut parser = Parser::new();
        run_with(&mut parser, &[b"retry: 42\n", bad, b"\n"]);
        assert_eq!(
            parser.reconnection_time(),
            Some(Duration::from_millis(42)),
            "{:?} must be ignored",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn retry_takes_effect_when_its_line_is_read() {
    let mut parser = Parser::new();
    parser.push(Bytes::from_static(b"data: x\nretry: 10\n"));
    assert!(
        parser.next_event().is_none(),
        "the event is not complete yet"
    );
    assert_eq!(parser.reconnection_time(), Some(Duration::from_millis(10)));
    // Even if the block is never completed.
    assert!(parser.finish());
    assert_eq!(parser.reconnection_time(), Some(Duration::from_millis(10)));
}

#[test]
fn retry_too_large_saturates() {
    let mut parser = Parser::new();
    run_with(&mut parser, &[b"retry: 99999999999999999999999999\n\n"]);
    assert_eq!(
        parser.reconnection_time(),
        Some(Duration::from_millis(u64::MAX))
    );
}

// --- Call protocol --------------------------------------------------------------------------

#[test]
fn pushing_between_events_keeps_the_rest_of_the_chunk() {
    let mut parser = Parser::new();
    parser.push(Bytes::from_static(b"id: 1\ndata: a\n\nevent: e\ndata: b"));
    let first = parser.next_event().unwrap().unwrap();
    assert_eq!(
        (first.event_type(), &*first.data(), first.last_event_id()),
        (&b"message"[..], &b"a"[..], &b"1"[..])
    );
    // Push before asking for the next event: the event is finished in the new chunk.
    parser.push(Bytes::from_static(b"c\n\ndata: d\n\n"));
    let second = parser.next_event().unwrap().unwrap().to_event();
    assert_eq!(second, Event::new("e", "bc", "1"));
    let third = parser.next_event().unwrap().unwrap().to_event();
    assert_eq!(third, Event::new("message", "d", "1"));
    assert!(parser.next_event().is_none());
    assert!(!parser.finish());
}

#[test]
fn long_line_moved_in_whole_chunks_then_short_lines() {
    // Chunks that continue a line are moved into it whole; the lines after it in the last
    // chunk are read as usual.
    let long = "x".repeat(4096 * 3);
    let input = format!("id: 5\ndata: {long}\n\nevent: t\ndata: y\n\n");
    for size in [300, 1024, 4096, 5000] {
        let chunks: Vec<&[u8]> = input.as_bytes().chunks(size).collect();
        let got = events(&chunks);
        assert_eq!(
            got,
            [
                Event::new("message", long.clone(), "5"),
                Event::new("t", "y", "5")
            ],
            "chunks of {size} bytes"
        );
    }
}

// --- End of stream --------------------------------------------------------------------------

#[test]
fn incomplete_event_at_end_of_stream_is_discarded() {
    let mut parser = Parser::new();
    let (items, dropped) = run_with(&mut parser, &[b"data: a\n\ndata: b\n"]);
    assert_eq!(items.len(), 1);
    assert!(dropped);
    // The same without even a line ending.
    let (items, dropped) = run_with(&mut Parser::new(), &[b"data: b"]);
    assert!(items.is_empty());
    assert!(dropped);
}

#[test]
fn complete_stream_drops_nothing_at_the_end() {
    let (items, dropped) = run_with(&mut Parser::new(), &[b"data: a\n\n: bye\n"]);
    assert_eq!(items.len(), 1);
    assert!(!dropped, "a trailing comment is not an event");
}

#[test]
fn finish_prepares_a_reconnection_with_fresh_buffers() {
    let mut parser = Parser::new();
    run_with(
        &mut parser,
        &[b"id: 5\nretry: 7\ndata: a\n\nevent: x\ndata: half"],
    );
    assert_eq!(parser.last_event_id(), b"5");
    // The new stream may start with a BOM again; its buffers start empty.
    let (items, _) = run_with(&mut parser, &[b"\xEF\xBB\xBFdata: b\n\n"]);
    let event = items[0].as_ref().unwrap();
    assert_eq!(event.event_type(), "message");
    assert_eq!(event.data(), "b");
    assert_eq!(
        event.last_event_id(),
        "",
        "the last event ID buffer is per stream"
    );
    assert_eq!(parser.reconnection_time(), Some(Duration::from_millis(7)));
}

// --- Limits ---------------------------------------------------------------------------------

fn small() -> Parser {
    Parser::with_limits(Limits::new().with_max_line_len(16).with_max_event_len(24))
}

#[test]
fn line_too_long_skips_its_event_and_resyncs_at_the_blank_line() {
    let (items, _) = run_with(
        &mut small(),
        &[b"data: ok\n\nevent: x\ndata: 0123456789abcdef\ndata: more\n\ndata: after\n\n"],
    );
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_ref().unwrap().data(), "ok");
    assert_eq!(items[1], Err(Skipped::LineTooLong { limit: 16 }));
    let after = items[2].as_ref().unwrap();
    assert_eq!(after.data(), "after");
    assert_eq!(
        after.event_type(),
        "message",
        "the skipped block's type is gone"
    );
}

/// The short values a many-line event had gathered before it was skipped are dropped with it:
/// nothing of them reaches the next event.
#[test]
fn a_skipped_many_line_event_leaves_nothing_to_the_next() {
    let (items, _) = run_with(
        &mut small(),
        &[b"data: a\ndata: b\ndata: 0123456789\ndata: 0123456789\n\ndata: c\ndata: d\n\n"],
    );
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0], Err(Skipped::EventTooLarge { limit: 24 }));
    assert_eq!(items[1].as_ref().unwrap().data(), "c\nd");
}

#[test]
fn line_too_long_is_detected_across_chunks_without_buffering_it() {
    let mut parser = small();
    parser.push(Bytes::from_static(b"data: 0123456789"));
    assert!(parser.next_event().is_none());
    parser.push(Bytes::from_static(b"abcdef"));
    assert!(matches!(
        parser.next_event(),
        Some(Err(Skipped::LineTooLong { limit: 16 }))
    ));
    assert_eq!(parser.buffered_len(), 0, "the long line is not kept");
    parser.push(Bytes::from_static(b"ghijkl\ndata: x\n\ndata: y\n\n"));
    assert_eq!(&*parser.next_event().unwrap().unwrap().data(), b"y");
}

#[test]
fn line_of_exactly_the_limit_is_accepted() {
    let (items, _) = run_with(&mut small(), &[b"data: 0123456789\n\n"]);
    assert_eq!(items[0].as_ref().unwrap().data(), "0123456789");
}

#[test]
fn event_too_large_is_skipped_and_the_stream_goes_on() {
    let (items, _) = run_with(
        &mut small(),
        // 11 + 11 + 4 bytes of data buffer: over 24 at the third line.
        &[b"data: 0123456789\ndata: 0123456789\ndata: xyz\n\ndata: next\n\n"],
    );
    assert_eq!(items[0], Err(Skipped::EventTooLarge { limit: 24 }));
    assert_eq!(items[1].as_ref().unwrap().data(), "next");
    assert_eq!(items.len(), 2);
}

#[test]
fn event_of_exactly_the_limit_is_accepted() {
    // 11 + 11 + 2 = 24 bytes of data buffer.
    let (items, _) = run_with(
        &mut small(),
        &[b"data: 0123456789\ndata: 0123456789\ndata: x\n\n"],
    );
    assert_eq!(
        items[0].as_ref().unwrap().data(),
        "0123456789\n0123456789\nx"
    );
}

#[test]
fn skipped_event_still_commits_the_id_read_before_it() {
    let mut parser = small();
    let (items, _) = run_with(
        &mut parser,
        &[b"id: 3\ndata: 0123456789abcdef\nid: 4\n\ndata: x\n\n"],
    );
    assert_eq!(items[1].as_ref().unwrap().last_event_id(), "3");
}

#[test]
fn over_limit_comment_line_skips_its_block() {
    let (items, _) = run_with(
        &mut small(),
        &[b": 0123456789abcdefgh\ndata: x\n\ndata: y\n\n"],
    );
    assert_eq!(items[0], Err(Skipped::LineTooLong { limit: 16 }));
    assert_eq!(items[1].as_ref().unwrap().data(), "y");
}

// --- Zero copy ------------------------------------------------------------------------------

fn lies_within(inner: &[u8], outer: &Bytes) -> bool {
    let outer = outer.as_ptr_range();
    let inner = inner.as_ptr_range();
    outer.start <= inner.start && inner.end <= outer.end
}

#[test]
fn field_within_one_chunk_is_a_slice_of_that_chunk() {
    let chunk = Bytes::from_static(b"event: endpoint\nid: abc\ndata: payload\n\n");
    let mut parser = Parser::new();
    parser.push(chunk.clone());
    let event = parser.next_event().unwrap().unwrap().to_event();
    assert!(lies_within(event.data().as_bytes(), &chunk));
    assert!(lies_within(event.event_type().as_bytes(), &chunk));
    assert!(lies_within(event.last_event_id().as_bytes(), &chunk));
}

#[test]
fn message_type_and_empty_id_need_no_slice_of_the_chunk() {
    let chunk = Bytes::from_static(b"event: message\ndata: payload\n\n");
    let mut parser = Parser::new();
    parser.push(chunk.clone());
    let event = parser.next_event().unwrap().unwrap().to_event();
    assert_eq!(event.event_type(), "message");
    assert!(!lies_within(event.event_type().as_bytes(), &chunk));
    assert_eq!(event.last_event_id(), "");
    assert!(lies_within(event.data().as_bytes(), &chunk));
}

#[test]
fn owned_events_agree_with_borrowed_ones_in_every_chunking() {
    // A Python-style CRLF stream with ids, types and multi-line data, cut into chunks of every
    // size from 1 byte to the whole, decoded to owned events.
    let input = b"event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n\
        event: endpoint\r\ndata: /m?id=\xC3\xA9\r\ndata: two\r\n\r\n\
        : keep-alive\r\n\r\ndata: \xFF\r\n\r\n";
    let expected = [
        ("message", "{\"a\":1}", "1"),
        ("endpoint", "/m?id=\u{E9}\ntwo", "1"),
        ("message", "\u{FFFD}", "1"),
    ];
    for size in 1..=input.len() {
        let chunks: Vec<&[u8]> = input.chunks(size).collect();
        let got = events(&chunks);
        let got: Vec<_> = got
            .iter()
            .map(|e| {
                (
                    e.event_type().as_str(),
                    e.data().as_str(),
                    e.last_event_id().as_str(),
                )
            })
            .collect();
        assert_eq!(got, expected, "chunks of {size} bytes");
    }
}

#[test]
fn field_straddling_chunks_is_copied_whole() {
    let first = Bytes::from_static(b"data: pay");
    let second = Bytes::from_static(b"load\n\n");
    let mut parser = Parser::new();
    parser.push(first.clone());
    parser.push(second.clone());
    let event = parser.next_event().unwrap().unwrap().to_event();
    assert_eq!(event.data(), "payload");
    assert!(!lies_within(event.data().as_bytes(), &first));
    assert!(!lies_within(event.data().as_bytes(), &second));
}

/// An event of many short `data:` lines, one per chunk and each chunk padded with a comment:
/// the event holds copies of the short lines, not the chunks (which would hold many times
/// `max_event_len`).
#[test]
fn short_data_lines_do_not_keep_their_chunks_alive() {
    let mut parser = Parser::new();
    let chunks: Vec<Bytes> = (0..64)
        .map(|_| {
            let mut chunk = b"data:x\n:".to_vec();
            chunk.extend(std::iter::repeat_n(b'c', 16 * 1024));
            chunk.push(b'\n');
            Bytes::from(chunk)
        })
        .collect();
    for chunk in &chunks {
        parser.push(chunk.clone());
        assert!(parser.next_event().is_none(), "the event is not over");
    }
    // Every chunk but the one being read is the test's alone.
    let pinned = chunks[..63].iter().filter(|c| !c.is_unique()).count();
    assert_eq!(pinned, 0, "chunks kept alive by the unfinished event");
    parser.push(Bytes::from_static(b"\n"));
    let event = parser
        .next_event()
        .expect("dispatched")
        .expect("within limits");
    let event = event.to_event();
    assert_eq!(
        event.data().as_bytes(),
        vec![b"x".as_slice(); 64].join(&b"\n"[..])
    );
}
