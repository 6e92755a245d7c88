//! 2026-07-28 tasks learned from response bodies, as a property: a `tools/call` answered by a
//! JSON-RPC response (as JSON, with or without a length, or as an SSE stream after
//! notifications), its members in any order, any JSON whitespace between its tokens (split over
//! `data:` lines in a stream), strings of brackets, quotes and escapes around it, the task id
//! partly written as `\u` escapes, the whole cut into chunks anywhere. A `CreateTaskResult`'s
//! task is always learned (its `tasks/get` is pinned to the backend that answered) and the body
//! passes unchanged; any other result, or a message that is not a response, learns nothing.
#![cfg(feature = "tasks")]

mod common;

use std::fmt::Write as _;

use bytes::Bytes;
use common::*;
use mcp_affinity::TenantId;
use mcp_affinity::router::{Data, End, HeadOutcome, How, Router};
use proptest::prelude::*;

/// How the answer is framed.
#[derive(Clone, Debug)]
enum Framing {
    Json {
        length: bool,
    },
    /// An event stream: notifications before the answer, and whether its events name their
    /// type (`message` is the default).
    Sse {
        notifications: u8,
        typed: bool,
        eol: &'static str,
    },
}

#[derive(Clone, Debug)]
struct Answer {
    /// `task`, `complete`, or no `resultType` at all.
    result_type: u8,
    /// A response (0), or not one: a request that also carries a result (1), or a result and
    /// an error at once (2).
    shape: u8,
    id: String,
    /// Which characters of the id are written as `\u00XX`.
    escaped: Vec<bool>,
    /// The order of the message's members and of the result's (a seed).
    order: u64,
    /// The whitespace after each token (a seed).
    spacing: u64,
    /// A string member full of brackets, quotes and escapes, in the result and beside it.
    tricky: bool,
    framing: Framing,
}

fn answer() -> impl Strategy<Value = Answer> {
    let framing = prop_oneof![
        any::<bool>().prop_map(|length| Framing::Json { length }),
        (
            0u8..3,
            any::<bool>(),
            prop::sample::select(vec!["\n", "\r\n", "\r"])
        )
            .prop_map(|(notifications, typed, eol)| Framing::Sse {
                notifications,
                typed,
                eol
            }),
    ];
    (
        (
            0u8..3,
            prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        ),
        "[A-Za-z0-9-]{1,40}",
        prop::collection::vec(any::<bool>(), 40),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        framing,
    )
        .prop_map(
            |((result_type, shape), id, escaped, order, spacing, tricky, framing)| Answer {
                result_type,
                shape,
                id,
                escaped,
                order,
                spacing,
                tricky,
                framing,
            },
        )
}

/// A seeded shuffle (xorshift), so that a case shrinks and replays.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

const TRICKY: &str = r#""x}]{[\"\\\/\u007b\n""#;

impl Answer {
    fn is_task(&self) -> bool {
        self.result_type == 0 && self.shape == 0
    }

    /// The JSON text, tokens joined by whitespace drawn from `spacing`.
    fn json(&self) -> String {
        let mut id = String::from('"');
        for (i, c) in self.id.chars().enumerate() {
            if self.escaped[i] {
                let _ = write!(id, "\\u{:04x}", u32::from(c));
            } else {
                id.push(c);
            }
        }
        id.push('"');
        let mut result = vec![
            ("\"taskId\"", id),
            ("\"status\"", "\"working\"".into()),
            ("\"ttlMs\"", "60000".into()),
        ];
        match self.result_type {
            0 => result.push(("\"resultType\"", "\"task\"".into())),
            1 => result.push(("\"resultType\"", "\"complete\"".into())),
            _ => {}
        }
        if self.tricky {
            result.push(("\"note\"", TRICKY.into()));
            result.push(("\"nested\"", r#"{"a":[1,{"b":"}"}],"c":[]}"#.into()));
        }
        shuffle(&mut result, self.order);
        let mut message = vec![
            ("\"jsonrpc\"", "\"2.0\"".to_string()),
            ("\"id\"", "7".into()),
            ("\"result\"", object(&result, self.spacing)),
        ];
        if self.tricky {
            message.push(("\"_meta\"", format!("{{\"s\":{TRICKY}}}")));
        }
        match self.shape {
            1 => message.push(("\"method\"", "\"tools/call\"".into())),
            2 => message.push(("\"error\"", r#"{"code":-32000,"message":"}"}"#.into())),
            _ => {}
        }
        shuffle(&mut message, self.order >> 7);
        object(&message, self.spacing >> 3)
    }

    /// The body the backend sends, and its content type.
    fn body(&self) -> (Vec<u8>, &'static str) {
        let json = self.json();
        match &self.framing {
            Framing::Json { .. } => (json.into_bytes(), "application/json"),
            Framing::Sse {
                notifications,
                typed,
                eol,
            } => {
                let mut out = String::new();
                let event = |out: &mut String, data: &str| {
                    if *typed {
                        out.push_str("event: message");
                        out.push_str(eol);
                    }
                    // JSON whitespace that ends a line goes on the next `data:` line.
                    for line in data.split(['\r', '\n']) {
                        out.push_str("data: ");
                        out.push_str(line);
                        out.push_str(eol);
                    }
                    out.push_str(eol);
                };
                for n in 0..*notifications {
                    out.push_str(": keep-alive");
                    out.push_str(eol);
                    event(
                        &mut out,
                        &format!(
                            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progress":{n},"note":{TRICKY}}}}}"#
                        ),
                    );
                }
                event(&mut out, &json);
                (out.into_bytes(), "text/event-stream")
            }
        }
    }
}

/// `{member, …}` with whitespace from `seed` after each token.
fn object(members: &[(&str, String)], seed: u64) -> String {
    const SPACE: [&str; 5] = ["", " ", "\n", "\t", "\r\n"];
    let mut bits = seed;
    let mut space = || {
        let s = SPACE[(bits % 5) as usize];
        bits = bits.rotate_right(3);
        s
    };
    let mut out = String::from("{");
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(space());
        out.push_str(name);
        out.push_str(space());
        out.push(':');
        out.push_str(space());
        out.push_str(value);
        out.push_str(space());
    }
    out.push('}');
    out
}

fn call(method: &str, name: &str) -> http::request::Parts {
    post(
        "/mcp",
        &[MODERN, ("mcp-method", method), ("mcp-name", name)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn a_created_task_is_learned_whatever_the_body_s_shape_and_chunking(
        answer in answer(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let router = Router::builder().build();
        for name in ["a", "b", "c"] {
            router.add_backend(TenantId::DEFAULT, name, 1).unwrap();
        }
        let now = Clock::new().now();
        let (body, content_type) = answer.body();
        let length = body.len().to_string();
        let mut headers = vec![("content-type", content_type)];
        if let Framing::Json { length: true } = answer.framing {
            headers.push(("content-length", &length));
        }
        let mut exchange = forward(router.route(&call("tools/call", "slow_job"), now));
        let creator = exchange.backend();
        let outcome = router.on_response_head(&mut exchange, &mut resp(200, &headers), now);
        prop_assert!(matches!(outcome, HeadOutcome::Observe), "{outcome:?}");
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        bounds.extend([0, body.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let mut out = Vec::new();
        for pair in bounds.windows(2) {
            let chunk = Bytes::copy_from_slice(&body[pair[0]..pair[1]]);
            match router.on_response_data(&mut exchange, chunk, now) {
                Data::Send(sent) => out.extend_from_slice(&sent),
                Data::Hold => prop_assert!(false, "a task answer is never held"),
            }
        }
        router.on_exchange_end(exchange, End::Completed, now);
        prop_assert_eq!(&out, &body, "passed unchanged");

        let learned = router.metrics().keys_learned;
        if answer.is_task() {
            prop_assert_eq!(learned, 1, "{}", String::from_utf8_lossy(&body));
            for _ in 0..3 {
                let poll = forward(router.route(&call("tasks/get", &answer.id), now));
                prop_assert_eq!(poll.how(), How::Pinned);
                prop_assert_eq!(poll.backend(), creator);
                router.on_exchange_end(poll, End::Completed, now);
            }
        } else {
            prop_assert_eq!(learned, 0, "{}", String::from_utf8_lossy(&body));
        }
    }
}
