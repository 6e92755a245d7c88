//! What the fleet tests share (`tests/e2e_fleet.rs`: sealed ids; `tests/e2e_fleet_redis.rs`:
//! a shared Redis): the SDKs, their replicas, their clients under load, and what the
//! round-robin front saw.

#![allow(dead_code)] // each fleet test uses its own subset

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::e2e::rmcp_peers::{self, Replica, Track};
use crate::e2e::{
    self, Proc, PyMode, check_affinity, here, node, node_clients, node_replicas, node_script,
    python, python_clients, python_replicas,
};
use crate::front::{Event, Front};
use serde_json::{Value, json};

/// The SDK the replicas and clients are built with.
#[derive(Clone, Copy, Debug)]
pub enum Sdk {
    Rmcp,
    Python(PyMode),
    Node { sse: bool },
}

impl Sdk {
    pub fn sse(self) -> bool {
        matches!(self, Sdk::Python(PyMode::Sse) | Sdk::Node { sse: true })
    }

    pub fn path(self) -> &'static str {
        if self.sse() { "/sse" } else { "/mcp" }
    }

    pub fn mode(self) -> &'static str {
        if self.sse() { "sse" } else { "streamable" }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sdk::Rmcp => "rmcp",
            Sdk::Python(PyMode::Streamable) => "py-streamable",
            Sdk::Python(PyMode::Sse) => "py-sse",
            Sdk::Node { sse: false } => "ts-streamable",
            Sdk::Node { sse: true } => "ts-sse",
        }
    }
}

/// The replicas, kept alive until dropped.
pub enum Replicas {
    Rmcp(Vec<Replica>),
    Python(Vec<e2e::PyReplica>),
    Node(Vec<e2e::TsReplica>),
}

impl Replicas {
    pub async fn start(sdk: Sdk) -> Replicas {
        match sdk {
            Sdk::Rmcp => {
                let mut replicas = Vec::new();
                for i in 1..=3 {
                    replicas.push(Replica::start(&format!("r{i}")).await.expect("replica"));
                }
                Replicas::Rmcp(replicas)
            }
            Sdk::Python(mode) => Replicas::Python(python_replicas("r", 3, mode).await),
            Sdk::Node { .. } => Replicas::Node(node_replicas("r", 3).await),
        }
    }

    /// `NAME=URL` for each replica: every proxy of the fleet names them alike.
    pub fn backends(&self) -> Vec<String> {
        match self {
            Replicas::Rmcp(r) => r
                .iter()
                .map(|r| format!("{}={}", r.name, r.url()))
                .collect(),
            Replicas::Python(r) => r
                .iter()
                .map(|r| format!("{}={}", r.name, r.url()))
                .collect(),
            Replicas::Node(r) => r
                .iter()
                .map(|r| format!("{}={}", r.name, r.url()))
                .collect(),
        }
    }
}

/// What the clients printed so far: JSON lines.
pub type Lines = Arc<Mutex<Vec<String>>>;

pub fn parse(line: &str) -> Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

/// The clients under load: an SDK's soak script in a process, or rmcp clients in tasks.
pub enum Soak {
    Process(Proc),
    Tasks {
        stop: Arc<AtomicBool>,
        next_starter: Arc<AtomicU64>,
        marks: Arc<AtomicU64>,
        tasks: tokio::task::JoinSet<()>,
    },
}

impl Soak {
    pub async fn start(sdk: Sdk, url: &str) -> (Soak, Lines) {
        // `--keep`: a failed call is made again in the same session; `--tokens`: each worker
        // session says its (sealed) id; calls time out after 4 s.
        let mut proc = match sdk {
            Sdk::Rmcp => {
                let lines: Lines = Arc::default();
                let soak = rmcp_soak(url, lines.clone());
                return (soak, lines);
            }
            Sdk::Python(_) => Proc::spawn(
                &format!("py-fleet-soak-{}", sdk.mode()),
                Command::new(python()).arg(here().join("py_soak.py")).args([
                    url,
                    "--mode",
                    sdk.mode(),
                    "--keep",
                    "--tokens",
                    "--timeout",
                    "4",
                ]),
            ),
            Sdk::Node { .. } => Proc::spawn(
                &format!("ts-fleet-soak-{}", sdk.mode()),
                Command::new(node()).arg(node_script("ts_soak.mjs")).args([
                    url,
                    "--mode",
                    sdk.mode(),
                    "--keep",
                    "--tokens",
                    "--timeout",
                    "4000",
                ]),
            ),
        };
        let lines = proc.collect_lines();
        (Soak::Process(proc), lines)
    }

    /// Asks for a `{"mark": n}` line: starters numbered `n` and up start after it.
    pub fn mark(&mut self, lines: &Lines) {
        match self {
            Soak::Process(proc) => proc.send_line("mark"),
            Soak::Tasks {
                next_starter,
                marks,
                ..
            } => {
                marks.fetch_add(1, Ordering::SeqCst);
                let mark = json!({"mark": next_starter.load(Ordering::SeqCst)});
                lines.lock().unwrap().push(mark.to_string());
            }
        }
    }

    pub async fn stop(self) {
        match self {
            Soak::Process(mut proc) => {
                proc.close_stdin();
                assert!(
                    proc.exited(Duration::from_secs(20)).await,
                    "{}: did not exit cleanly; stderr:\n{}",
                    proc.name,
                    proc.log()
                );
            }
            Soak::Tasks {
                stop, mut tasks, ..
            } => {
                stop.store(true, Ordering::SeqCst);
                let joined = async { while tasks.join_next().await.is_some() {} };
                tokio::time::timeout(Duration::from_secs(20), joined)
                    .await
                    .expect("the rmcp clients stop within 20 s");
            }
        }
    }
}

/// rmcp clients printing the soak scripts' lines, as `--keep` does: 9 workers calling in a
/// loop (a failed call is made again in the same session; 3 failures in a row start a new
/// one), and a new short session every 25 ms. rmcp re-initializes on a 404 by itself; a worker
/// sees that as a reply from a new session (count 1), reported as a session gone.
pub fn rmcp_soak(url: &str, lines: Lines) -> Soak {
    let stop = Arc::new(AtomicBool::new(false));
    let next_starter = Arc::new(AtomicU64::new(0));
    // How many marks were asked for: each error line says how many when its session's run of
    // failures began, as the soak scripts' do.
    let marks = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(9));
    let mut tasks = tokio::task::JoinSet::new();
    let emit = |lines: &Lines, value: Value| lines.lock().unwrap().push(value.to_string());
    for worker in 0..9 {
        let (url, lines, stop, ready, marks) = (
            url.to_string(),
            lines.clone(),
            stop.clone(),
            ready.clone(),
            marks.clone(),
        );
        tasks.spawn(async move {
            let mut session_no = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut since = marks.load(Ordering::SeqCst);
                let session = match rmcp_peers::connect(&url, true).await {
                    Ok(session) => session,
                    Err(e) => {
                        emit(&lines, json!({"worker": worker, "session": session_no, "error": e, "kind": "other", "marks": since}));
                        session_no += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let (mut replica, mut call, mut failures) = (None::<String>, 0, 0);
                while !stop.load(Ordering::SeqCst) {
                    if failures == 0 {
                        since = marks.load(Ordering::SeqCst);
                    }
                    match whoami(&session).await {
                        Ok(reply) => {
                            if replica.as_ref().is_some_and(|r| *r != reply.replica) && reply.count == 1 {
                                emit(&lines, json!({"worker": worker, "session": session_no, "error": "re-initialized by rmcp after a 404", "kind": "gone"}));
                                session_no += 1;
                                call = 0;
                            }
                            failures = 0;
                            replica = Some(reply.replica.clone());
                            emit(&lines, json!({"worker": worker, "session": session_no, "call": call, "replica": reply.replica, "count": reply.count}));
                            if session_no == 0 && call == 0 && ready.fetch_sub(1, Ordering::SeqCst) == 1 {
                                emit(&lines, json!({"ready": true}));
                            }
                            call += 1;
                        }
                        Err(e) if !stop.load(Ordering::SeqCst) => {
                            emit(&lines, json!({"worker": worker, "session": session_no, "error": e, "kind": "other", "marks": since}));
                            failures += 1;
                            if failures >= 3 {
                                session_no += 1;
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = rmcp_peers::close(session).await;
            }
        });
    }
    let (url, starter_lines, starter_stop, next) = (
        url.to_string(),
        lines.clone(),
        stop.clone(),
        next_starter.clone(),
    );
    tasks.spawn(async move {
        while ready.load(Ordering::SeqCst) > 0 && !starter_stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut starts = tokio::task::JoinSet::new();
        while !starter_stop.load(Ordering::SeqCst) {
            let no = next.fetch_add(1, Ordering::SeqCst);
            let (url, lines) = (url.clone(), starter_lines.clone());
            starts.spawn(async move {
                let line = match rmcp_peers::connect(&url, true).await {
                    Ok(session) => {
                        let line = match whoami(&session).await {
                            Ok(reply) => json!({"starter": no, "replica": reply.replica, "count": reply.count}),
                            Err(e) => json!({"starter": no, "error": e, "kind": "other", "phase": "call"}),
                        };
                        let _ = rmcp_peers::close(session).await;
                        line
                    }
                    Err(e) => json!({"starter": no, "error": e, "kind": "other", "phase": "initialize"}),
                };
                emit(&lines, line);
            });
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        while starts.join_next().await.is_some() {}
    });
    Soak::Tasks {
        stop,
        next_starter,
        marks,
        tasks,
    }
}

/// `whoami`, failing after 4 s.
pub async fn whoami(session: &rmcp_peers::Session) -> Result<rmcp_peers::Reply, String> {
    match tokio::time::timeout(Duration::from_secs(4), rmcp_peers::whoami(session)).await {
        Ok(result) => result,
        Err(_) => Err("timed out after 4 s".to_string()),
    }
}

/// Waits (up to `limit`) until `done` holds of the lines printed so far.
pub async fn until(lines: &Lines, limit: Duration, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + limit;
    while !done(&lines.lock().unwrap()) {
        if Instant::now() > deadline {
            let so_far = lines.lock().unwrap().join("");
            panic!("waited {limit:?} for {what}; lines so far:\n{so_far}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a line is an error (of a worker or a starter).
pub fn is_error(line: &str) -> bool {
    parse(line).get("error").is_some()
}

/// rmcp clients through the front: `n` sessions at once, `calls` calls each; returns each
/// session's track.
pub async fn rmcp_clients(url: &str, n: usize, calls: usize) -> Vec<Track> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = url.to_string();
        set.spawn(async move {
            let session = rmcp_peers::connect(&url, false).await?;
            let mut track = Track::default();
            for _ in 0..calls {
                track.record(&rmcp_peers::whoami(&session).await?);
            }
            let _ = rmcp_peers::close(session).await;
            Ok::<_, String>(track)
        });
    }
    let mut tracks = Vec::new();
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(60), set.join_next())
        .await
        .expect("the rmcp clients finish within 60 s")
    {
        tracks.push(joined.expect("client task").expect("client session"));
    }
    tracks
}

/// Phase 1: sessions through the front, several calls each. Returns (sessions, calls) after
/// checking affinity (a violation or a failed session panics).
pub async fn affinity_through_the_fleet(sdk: Sdk, url: &str) -> (usize, usize) {
    let (sessions, calls) = (12, 5);
    let replicas: Vec<String> = match sdk {
        Sdk::Rmcp => {
            let tracks = rmcp_clients(url, sessions, calls).await;
            for track in &tracks {
                assert_eq!(track.violations, 0, "affinity violation: {track:?}");
                assert_eq!(track.calls, calls as u64, "{track:?}");
            }
            tracks
                .iter()
                .map(|t| t.replica.clone().expect("a reply"))
                .collect()
        }
        Sdk::Python(_) => {
            let lines = python_clients(url, sdk.mode(), sessions, calls).await;
            check_affinity(&lines, sessions, calls)
        }
        Sdk::Node { .. } => {
            let lines = node_clients(url, sdk.mode(), sessions, calls).await;
            check_affinity(&lines, sessions, calls)
        }
    };
    assert!(
        e2e::distinct(&replicas) >= 2,
        "{sdk:?}: sessions on several replicas: {replicas:?}"
    );
    (sessions, sessions * calls)
}

/// What the front saw of one session id: the proxy whose answer gave it to the client, the
/// proxies it was presented to, and those where a request presenting it (or the stream that
/// minted it) was cut on its way.
#[derive(Debug, Default)]
pub struct Seen {
    pub minted: Option<usize>,
    pub presented: BTreeSet<usize>,
    pub cut: BTreeSet<usize>,
}

/// The front's log, summed up: requests sent and requests cut per proxy, and each session id.
#[derive(Debug, Default)]
pub struct Stats {
    pub served: Vec<u64>,
    pub cut: Vec<u64>,
    pub seen: HashMap<String, Seen>,
    /// The statuses of the answers that reached the clients, and how many of each.
    pub statuses: BTreeMap<u16, u64>,
}

pub fn stats(front: &Front) -> Stats {
    let mut stats = Stats {
        served: vec![0; front.upstreams()],
        cut: vec![0; front.upstreams()],
        ..Stats::default()
    };
    for event in front.log() {
        match event {
            Event::Sent(proxy, token) => {
                stats.served[proxy] += 1;
                if let Some(token) = token {
                    stats.seen.entry(token).or_default().presented.insert(proxy);
                }
            }
            Event::Minted(proxy, token) => {
                stats
                    .seen
                    .entry(token)
                    .or_default()
                    .minted
                    .get_or_insert(proxy);
            }
            Event::Answered(_, status, ..) => *stats.statuses.entry(status).or_default() += 1,
            Event::Cut(proxy, token) => {
                stats.cut[proxy] += 1;
                if let Some(token) = token {
                    stats.seen.entry(token).or_default().cut.insert(proxy);
                }
            }
        }
    }
    stats
}

/// How many session ids minted through one proxy were presented to another.
pub fn crossed(front: &Front) -> usize {
    stats(front)
        .seen
        .values()
        .filter(|seen| {
            seen.minted
                .is_some_and(|m| seen.presented.iter().any(|&p| p != m))
        })
        .count()
}

/// An error's text.
pub fn text(error: &Value) -> String {
    error
        .as_str()
        .map_or_else(|| error.to_string(), str::to_string)
}

/// The start of an error's text, for a report.
pub fn brief(text: &str) -> &str {
    text.char_indices()
        .nth(120)
        .map_or(text, |(at, _)| &text[..at])
}

/// A session's errors, in order, for a report.
pub fn texts(errors: &[(String, usize)]) -> String {
    let texts: Vec<&str> = errors.iter().map(|(e, _)| brief(e)).collect();
    texts.join(" | ")
}

/// Whether an error says the session is gone (404), which no session of a fleet that lost a
/// proxy may be told.
pub fn told_gone(error: &str) -> bool {
    [
        "Session not found",
        "Session terminated",
        "HTTP 404",
        "404 Not Found",
        "re-initialized",
    ]
    .iter()
    .any(|g| error.contains(g))
}

/// The fleet tests run one at a time: each runs seven or eight processes on two cores.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
