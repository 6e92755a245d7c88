//! Property tests for the SSE parser: split invariance, and agreement with a naive oracle.

use bytes::Bytes;
use mcp_affinity::sse::{Limits, Parser, Skipped};
use proptest::prelude::*;

/// What a whole parse produced: every item (event as (type, data, id) or skip), whether
/// `finish` dropped something, the last event ID and the reconnection time.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    items: Vec<Result<(String, String, String), Skipped>>,
    dropped: bool,
    last_event_id: String,
    retry_ms: Option<u128>,
}

fn parse(limits: Limits, chunks: &[&[u8]]) -> Outcome {
    let mut parser = Parser::with_limits(limits);
    let mut items = Vec::new();
    for chunk in chunks {
        parser.push(Bytes::copy_from_slice(chunk));
        while let Some(item) = parser.next_event() {
            items.push(item.map(|e| {
                // The borrowed view and the owned event must agree on the raw bytes.
                assert_eq!(e.data().len(), e.data_len());
                assert_eq!(e.data_chunks().collect::<Vec<_>>().concat(), &*e.data());
                let e = e.to_event();
                (
                    e.event_type().to_string(),
                    e.data().to_string(),
                    e.last_event_id().to_string(),
                )
            }));
        }
        assert!(
            parser.buffered_len() <= limits.max_line_len() + limits.max_event_len(),
            "buffered {} bytes, over the limits {limits:?}",
            parser.buffered_len()
        );
    }
    let last_event_id = String::from_utf8_lossy(parser.last_event_id()).into_owned();
    let retry_ms = parser.reconnection_time().map(|d| d.as_millis());
    let dropped = parser.finish();
    Outcome {
        items,
        dropped,
        last_event_id,
        retry_ms,
    }
}

/// The standard's algorithm written as plainly as possible, on a fully decoded string:
/// decode the whole stream, drop one leading BOM, cut lines char by char, interpret each line.
/// No limits, no chunks, no cleverness.
mod oracle {
    #[derive(Debug, Default)]
    pub struct Result {
        pub events: Vec<(String, String, String)>,
        pub last_event_id: String,
        pub retry_ms: Option<u128>,
        pub dropped: bool,
    }

    pub fn run(input: &[u8]) -> Result {
        let decoded = String::from_utf8_lossy(input);
        let text = decoded.strip_prefix('\u{FEFF}').unwrap_or(&decoded);

        let mut lines = Vec::new();
        let mut line = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    lines.push(std::mem::take(&mut line));
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                }
                '\n' => lines.push(std::mem::take(&mut line)),
                c => line.push(c),
            }
        }
        let unfinished_line = !line.is_empty();

        let mut out = Result::default();
        let mut data = String::new();
        let mut has_data_buffer_content = false;
        let mut event_type = String::new();
        let mut id_buffer = String::new();
        let mut field_seen = false;
        for line in lines {
            if line.is_empty() {
                out.last_event_id = id_buffer.clone();
                field_seen = false;
                if !has_data_buffer_content {
                    event_type.clear();
                    continue;
                }
                if data.ends_with('\n') {
                    data.pop();
                }
                let kind = if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut event_type)
                };
                out.events
                    .push((kind, std::mem::take(&mut data), out.last_event_id.clone()));
                has_data_buffer_content = false;
                event_type.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            field_seen = true;
            let (name, value) = match line.find(':') {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(' ').unwrap_or(value))
                }
                None => (&line[..], ""),
            };
            match name {
                "event" => event_type = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                    has_data_buffer_content = true;
                }
                "id" if !value.contains('\0') => id_buffer = value.to_owned(),
                "retry" if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) => {
                    // Saturating, as the parser documents.
                    let n = value
                        .parse::<u128>()
                        .unwrap_or(u128::MAX)
                        .min(u128::from(u64::MAX));
                    out.retry_ms = Some(n);
                }
                _ => {}
            }
        }
        out.dropped = field_seen || unfinished_line;
        out
    }
}

/// Inputs built from the tokens that matter to the grammar, plus arbitrary bytes.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"data".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"event".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"id".to_vec()),
        Just(b"id: ".to_vec()),
        Just(b"retry: ".to_vec()),
        Just(b":".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\xEF\xBB".to_vec()),
        Just(b"\xE2\x82\xAC".to_vec()),
        Just(b"\xF0\x9F\x98\x80".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"message".to_vec()),
        Just(b"123".to_vec()),
        Just(b"x".to_vec()),
        prop::collection::vec(any::<u8>(), 1..4),
        prop::collection::vec(b'a'..=b'z', 1..40),
        // Long enough that a split leaves pieces the parser slices rather than copies.
        Just(vec![b'a'; 300]),
    ];
    prop::collection::vec(token, 0..60).prop_map(|tokens| tokens.concat())
}

/// Cuts `input` at the given points (sorted, duplicates make empty chunks).
fn chunks<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(&input[start..p]);
        start = p;
    }
    out.push(&input[start..]);
    out
}

const UNLIMITED: Limits = Limits::new()
    .with_max_line_len(usize::MAX / 4)
    .with_max_event_len(usize::MAX / 4);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_agrees_with_the_naive_oracle(input in stream_bytes(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let expected = oracle::run(&input);
        let got = parse(UNLIMITED, &chunks(&input, &cuts));
        let events: Vec<_> = got.items.iter().map(|i| i.clone().expect("no limits")).collect();
        prop_assert_eq!(events, expected.events);
        prop_assert_eq!(got.last_event_id, expected.last_event_id);
        prop_assert_eq!(got.retry_ms, expected.retry_ms);
        prop_assert_eq!(got.dropped, expected.dropped);
    }

    #[test]
    fn any_chunking_gives_the_events_of_the_whole_input(
        input in stream_bytes(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        max_line in 1usize..48,
        max_event in 1usize..96,
    ) {
        let limits = Limits::new().with_max_line_len(max_line).with_max_event_len(max_event);
        let whole = parse(limits, &[&input]);
        prop_assert_eq!(&parse(limits, &chunks(&input, &cuts)), &whole);
    }

    #[test]
    fn one_byte_chunks_give_the_events_of_the_whole_input(input in stream_bytes()) {
        let whole = parse(UNLIMITED, &[&input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(parse(UNLIMITED, &bytes), whole);
    }
}

#[test]
fn a_long_line_in_small_chunks_equals_the_line_whole() {
    // Not a timing test: it checks the result; `benches/sse_parser.rs` measures the cost.
    let mut input = b"data: ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1 << 20));
    input.extend_from_slice(b"\n\n");
    let limits = Limits::new().with_max_line_len(2 << 20);
    let small: Vec<&[u8]> = input.chunks(64).collect();
    assert_eq!(parse(limits, &small), parse(limits, &[&input]));
}
