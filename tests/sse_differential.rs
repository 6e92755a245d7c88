//! Differential test: the parser, fed whole and in random chunkings, against a plain reference
//! written from the WHATWG rules plus the documented `Limits` semantics. Bounded: `SSE_CASES`
//! cases (3,000 by default, a few seconds), seed `SSE_SEED`; `SSE_BIG` uses the default bounds.
//! (Written by the helper that attacked the parser's memory change; about 333,000 cases ran
//! clean then.)

use bytes::Bytes;
use mcp_affinity::sse::{Limits, Parser, Skipped};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
}

type Item = Result<(Vec<u8>, Vec<u8>, Vec<u8>), Skipped>;

#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Item>,
    dropped: bool,
    last_id: Vec<u8>,
    retry: Option<u64>,
}

/// The reference: one stream, on raw bytes.
struct Ref {
    last: Vec<u8>,
    retry: Option<u64>,
}

/// The event being read: its data (joined by LF), the bytes it counts against the bound, its
/// type, and whether any field line started it.
#[derive(Default)]
struct Block {
    data: Option<Vec<u8>>,
    data_len: usize,
    ty: Vec<u8>,
    started: bool,
}

impl Ref {
    fn run(&mut self, input: &[u8], l: usize, e: usize) -> Outcome {
        let mut input = input;
        if input.starts_with(b"\xEF\xBB\xBF") {
            input = &input[3..];
        }
        // Split into lines; remember whether the last one was unterminated.
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' => {
                    lines.push(&input[start..i]);
                    if input.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                    start = i + 1;
                }
                b'\n' => {
                    lines.push(&input[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        let tail = &input[start..];
        let mut items = Vec::new();
        let mut buf: Vec<u8> = Vec::new(); // last event ID buffer: new stream starts empty
        let mut block = Block::default();
        let mut skipping = false;
        for line in lines {
            if skipping {
                if line.is_empty() {
                    skipping = false;
                    self.last = buf.clone();
                }
                continue;
            }
            if line.len() > l {
                items.push(Err(Skipped::LineTooLong { limit: l }));
                skipping = true;
                block = Block::default();
                continue;
            }
            if line.is_empty() {
                self.last = buf.clone();
                let ended = std::mem::take(&mut block);
                if let Some(d) = ended.data {
                    let t = if ended.ty.is_empty() {
                        b"message".to_vec()
                    } else {
                        ended.ty
                    };
                    items.push(Ok((t, d, self.last.clone())));
                }
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            block.started = true;
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(c) => {
                    let v = &line[c + 1..];
                    (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match name {
                b"data" => {
                    if block.data_len + value.len() + 1 > e {
                        items.push(Err(Skipped::EventTooLarge { limit: e }));
                        skipping = true;
                        block = Block::default();
                        continue;
                    }
                    block.data_len += value.len() + 1;
                    match &mut block.data {
                        Some(d) => {
                            d.push(b'\n');
                            d.extend_from_slice(value);
                        }
                        None => block.data = Some(value.to_vec()),
                    }
                }
                b"event" => block.ty = value.to_vec(),
                b"id" if !value.contains(&0) => buf = value.to_vec(),
                b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                    self.retry = Some(value.iter().fold(0u64, |n, d| {
                        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                    }));
                }
                _ => {}
            }
        }
        // An unterminated tail line: counts against the line bound as it arrives.
        // (A stream that is only a BOM prefix is an unterminated tail too.)
        let dropped = block.started || skipping || !tail.is_empty();
        let bom_prefix = !input.is_empty() && input.len() < 3 && b"\xEF\xBB\xBF".starts_with(input);
        if !skipping && tail.len() > l && !bom_prefix {
            items.push(Err(Skipped::LineTooLong { limit: l }));
        }
        Outcome {
            items,
            dropped,
            last_id: self.last.clone(),
            retry: self.retry,
        }
    }
}

fn drain(parser: &mut Parser, items: &mut Vec<Item>) {
    while let Some(item) = parser.next_event() {
        items.push(item.map(|ev| {
            let data = ev.data().into_owned();
            let chunks: Vec<u8> = ev.data_chunks().collect::<Vec<_>>().concat();
            assert_eq!(chunks, data, "data_chunks != data");
            assert_eq!(ev.data_len(), data.len());
            let owned = ev.to_event();
            assert_eq!(owned.data().as_str(), String::from_utf8_lossy(&data));
            assert_eq!(
                owned.event_type().as_str(),
                String::from_utf8_lossy(ev.event_type())
            );
            assert_eq!(
                owned.last_event_id().as_str(),
                String::from_utf8_lossy(ev.last_event_id())
            );
            (ev.event_type().to_vec(), data, ev.last_event_id().to_vec())
        }));
    }
}

fn feed(parser: &mut Parser, chunks: &[&[u8]], rng: &mut Rng) -> Outcome {
    let mut items = Vec::new();
    for c in chunks {
        parser.push(Bytes::copy_from_slice(c));
        // Sometimes queue several chunks before draining.
        if rng.chance(3, 4) {
            drain(parser, &mut items);
        }
    }
    drain(parser, &mut items);
    let last_id = parser.last_event_id().to_vec();
    let retry = parser.reconnection_time().map(|d| d.as_millis() as u64);
    let dropped = parser.finish();
    Outcome {
        items,
        dropped,
        last_id,
        retry,
    }
}

fn value(rng: &mut Rng, out: &mut Vec<u8>) {
    let len = match rng.below(10) {
        0..=3 => rng.below(8),
        4..=5 => rng.below(40),
        6 => 250 + rng.below(12),
        7 => 200 + rng.below(600),
        8 => rng.below(2000),
        _ => 0,
    };
    for _ in 0..len {
        let b = match rng.below(60) {
            0 => 0xE2,
            1 => 0x82,
            2 => 0x00,
            3 => b':',
            4 => b' ',
            _ => b'a' + rng.below(26) as u8,
        };
        out.push(b);
    }
}

fn eol(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.below(3) {
        0 => out.extend_from_slice(b"\n"),
        1 => out.extend_from_slice(b"\r"),
        _ => out.extend_from_slice(b"\r\n"),
    }
}

fn stream(rng: &mut Rng) -> Vec<u8> {
    let mut s = Vec::new();
    match rng.below(8) {
        0 => s.extend_from_slice(b"\xEF\xBB\xBF"),
        1 => s.extend_from_slice(b"\xEF\xBB"),
        2 => s.extend_from_slice(b"\xEF\xBB\xBF\xEF\xBB\xBF"),
        _ => {}
    }
    let events = rng.below(8);
    for _ in 0..events {
        let lines = match rng.below(4) {
            0 => rng.below(40),
            _ => rng.below(6),
        };
        for _ in 0..lines {
            match rng.below(16) {
                0..=7 => {
                    s.extend_from_slice(if rng.chance(1, 2) {
                        b"data: "
                    } else {
                        b"data:"
                    });
                    value(rng, &mut s);
                }
                8 => s.extend_from_slice(b"data"),
                9 => {
                    s.extend_from_slice(b"event: ");
                    value(rng, &mut s);
                }
                10 => {
                    s.extend_from_slice(b"id: ");
                    value(rng, &mut s);
                }
                11 => {
                    s.extend_from_slice(b"retry: ");
                    s.extend_from_slice(rng.below(100000).to_string().as_bytes());
                }
                12 => {
                    s.push(b':');
                    value(rng, &mut s);
                }
                13 => {
                    s.extend_from_slice(b"dat");
                    value(rng, &mut s);
                }
                14 => s.extend_from_slice(b"id"),
                _ => {}
            }
            eol(rng, &mut s);
        }
        if rng.chance(7, 8) {
            eol(rng, &mut s);
        }
    }
    // Sometimes stop mid-event or mid-line.
    if rng.chance(1, 4) {
        s.extend_from_slice(b"data: tail");
        if rng.chance(1, 2) {
            eol(rng, &mut s);
        }
    }
    s
}

fn chunking<'a>(rng: &mut Rng, s: &'a [u8]) -> Vec<&'a [u8]> {
    let mode = rng.below(6);
    let mut out = Vec::new();
    let mut at = 0;
    while at < s.len() {
        let n = match mode {
            0 => 1,
            1 => 1 + rng.below(8),
            2 => 1 + rng.below(300),
            3 => 1 + rng.below(3000),
            4 => [1, 3, 64, 255, 256, 257, 1024, 4096][rng.below(8)],
            _ => {
                if rng.chance(1, 2) {
                    1 + rng.below(4)
                } else {
                    200 + rng.below(2000)
                }
            }
        };
        let n = n.min(s.len() - at);
        out.push(&s[at..at + n]);
        at += n;
    }
    out
}

#[test]
fn parser_agrees_with_reference_under_random_chunkings_and_limits() {
    let cases: usize = std::env::var("SSE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("SSE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed);
    let mut skips = 0;
    let mut events = 0;
    for case in 0..cases {
        let s = stream(&mut rng);
        let l = match rng.below(4) {
            0 => rng.below(40),
            1 => rng.below(1000),
            2 => 250 + rng.below(20),
            _ => 1 << 20,
        };
        let e = match rng.below(4) {
            0 => rng.below(60),
            1 => rng.below(3000),
            2 => 250 + rng.below(600),
            _ => 4 << 20,
        };
        let (l, e) = if std::env::var("SSE_BIG").is_ok() {
            (1 << 20, 4 << 20)
        } else {
            (l, e)
        };
        let limits = Limits::new().with_max_line_len(l).with_max_event_len(e);
        // Two streams on one parser (a reconnection), to catch state leaking across finish().
        let s2 = stream(&mut rng);
        let mut reference = Ref {
            last: Vec::new(),
            retry: None,
        };
        let want1 = reference.run(&s, l, e);
        let want2 = reference.run(&s2, l, e);
        skips += want1.items.iter().filter(|i| i.is_err()).count();
        events += want1.items.iter().filter(|i| i.is_ok()).count();
        for round in 0..4 {
            let mut parser = Parser::with_limits(limits);
            let c1: Vec<&[u8]> = if round == 0 {
                vec![&s[..]]
            } else {
                chunking(&mut rng, &s)
            };
            let c2: Vec<&[u8]> = if round == 0 {
                vec![&s2[..]]
            } else {
                chunking(&mut rng, &s2)
            };
            let got1 = feed(&mut parser, &c1, &mut rng);
            assert_eq!(
                got1,
                want1,
                "case {case} round {round} stream 1 {:?} limits {l}/{e} chunks {:?}",
                String::from_utf8_lossy(&s),
                c1.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
            let got2 = feed(&mut parser, &c2, &mut rng);
            assert_eq!(
                got2,
                want2,
                "case {case} round {round} stream 2 {:?} limits {l}/{e} chunks {:?}",
                String::from_utf8_lossy(&s2),
                c2.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
        }
    }
    eprintln!("{cases} cases x 4 feedings x 2 streams; {events} events, {skips} skips in stream 1");
}
