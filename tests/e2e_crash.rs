//! A crashed replica, end to end (issue #8): three replicas of a real MCP SDK server behind the
//! proxy of `examples/proxy.rs`, real SDK clients under steady load (sessions calling in a loop,
//! new sessions starting every 25 ms), then one replica killed with SIGKILL and started again
//! on the same port. Asserted, per SDK:
//!
//! - every session of the dead replica is told its session is gone (404, or a cut stream): its
//!   client starts over; no request of its is answered 502 or 503 (a live replica may fail a
//!   request itself: a 502 the test allows only there, and only if no client saw a failure);
//! - sessions of the live replicas see no error at all;
//! - no new session fails, those started within milliseconds of the kill included;
//! - the replica's old sessions are still answered 404 once it is back, and new sessions land
//!   on it again.
//!
//! rmcp re-initializes by itself on a 404: there, "told its session is gone" is a reply from a
//! new session on another replica, or, for a call whose answer was cut by the kill, the call
//! failing once its resumes are answered 404 (rmcp's default resumes forever: the soak's
//! clients stop after [`RESUMES`]). The rmcp replicas run in processes of their own (this test
//! binary, started again as one replica) so that SIGKILL is a real crash.
//!
//! Needs `tests/e2e/setup.sh` for the Python and TypeScript peers; fails, never skips,
//! without it.

#![allow(clippy::disallowed_methods)]

mod e2e;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::proxy::{Config, Running};
use e2e::rmcp_peers::{self, Replica};
use e2e::{
    Proc, PyMode, here, listening_port, node, node_replica, node_script, python, python_replica,
    raw_client, raw_session, raw_whoami,
};
use mcp_affinity::router::Health;
use serde_json::{Value, json};

/// The environment variable that makes this test binary an rmcp replica: `NAME PORT`.
const RMCP_REPLICA: &str = "MCP_AFFINITY_RMCP_REPLICA";

/// Not a test: the body of an rmcp replica process (see the module docs). Run only when the
/// crash tests start it, with `--ignored` and [`RMCP_REPLICA`] set.
#[test]
#[ignore = "started by the crash tests as a replica process"]
fn rmcp_replica_process() {
    let spec = std::env::var(RMCP_REPLICA).expect("started as a replica");
    let (name, port) = spec.split_once(' ').expect("NAME PORT");
    let port: u16 = port.parse().expect("a port");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let addr = format!("127.0.0.1:{port}").parse().expect("an address");
        let replica = Replica::start_on(name, addr).await.expect("replica starts");
        println!("LISTENING {}", replica.addr.port());
        // Until the test closes our stdin (or dies).
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
        })
        .await;
        drop(replica);
    });
}

/// The SDK the replicas and clients are built with.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    Rmcp,
    Python(PyMode),
    Node { sse: bool },
}

impl Sdk {
    fn path(self) -> &'static str {
        match self {
            Sdk::Python(PyMode::Sse) | Sdk::Node { sse: true } => "/sse",
            _ => "/mcp",
        }
    }
}

/// Starts replica `name` on `port` (0: any); returns its port and process.
async fn spawn_replica(sdk: Sdk, name: &str, port: u16) -> (u16, Proc) {
    match sdk {
        Sdk::Rmcp => {
            let exe = std::env::current_exe().expect("the test binary");
            let mut proc = Proc::spawn(
                &format!("rmcp-{name}-{port}"),
                Command::new(exe)
                    .args([
                        "rmcp_replica_process",
                        "--exact",
                        "--ignored",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env(RMCP_REPLICA, format!("{name} {port}")),
            );
            let port = listening_port(&mut proc, name).await;
            (port, proc)
        }
        Sdk::Python(mode) => {
            let replica = python_replica(name, mode, port).await;
            (replica.port, replica.proc)
        }
        Sdk::Node { .. } => {
            let replica = node_replica(name, port).await;
            (replica.port, replica.proc)
        }
    }
}

/// What the clients printed so far: JSON lines.
type Lines = Arc<Mutex<Vec<String>>>;

/// The clients under load: an SDK's soak script in a process, or rmcp clients in tasks.
enum Soak {
    Process(Proc),
    Tasks(Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinSet<()>),
}

async fn start_soak(sdk: Sdk, url: &str) -> (Soak, Lines) {
    match sdk {
        Sdk::Rmcp => {
            let lines: Lines = Arc::default();
            let (stop, tasks) = rmcp_soak(url, lines.clone());
            (Soak::Tasks(stop, tasks), lines)
        }
        Sdk::Python(mode) => {
            let mode = if mode == PyMode::Sse {
                "sse"
            } else {
                "streamable"
            };
            let mut proc = Proc::spawn(
                &format!("py-soak-{mode}"),
                Command::new(python())
                    .arg(here().join("py_soak.py"))
                    .args([url, "--mode", mode]),
            );
            let lines = proc.collect_lines();
            (Soak::Process(proc), lines)
        }
        Sdk::Node { sse } => {
            let mode = if sse { "sse" } else { "streamable" };
            let mut proc = Proc::spawn(
                &format!("ts-soak-{mode}"),
                Command::new(node())
                    .arg(node_script("ts_soak.mjs"))
                    .args([url, "--mode", mode]),
            );
            let lines = proc.collect_lines();
            (Soak::Process(proc), lines)
        }
    }
}

async fn stop_soak(soak: Soak) {
    match soak {
        Soak::Process(mut proc) => {
            proc.close_stdin();
            assert!(
                proc.exited(Duration::from_secs(20)).await,
                "{}: did not exit cleanly; stderr:\n{}",
                proc.name,
                proc.log()
            );
        }
        Soak::Tasks(stop, mut tasks) => {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            // Every step of a worker is bounded: this is too.
            let joined = tokio::time::timeout(rmcp_peers::ANSWER_LIMIT * 4, async {
                while tasks.join_next().await.is_some() {}
            });
            assert!(joined.await.is_ok(), "the rmcp clients did not stop");
        }
    }
}

/// How often an rmcp client of the soak tries to resume an answer's stream that was cut: a
/// few times (see [`rmcp_peers::connect_with`]; its default tries forever).
const RESUMES: usize = 3;

/// The kind of a failed rmcp call: `inferred` when its answer's stream was cut and could not
/// be resumed (the replica died with the call in flight, and each resume was answered 404),
/// which rmcp reports as "Transport closed", whatever ended the stream.
///
/// An inferred failure tells the client its session is gone only on a session of the
/// victim that began before the kill and failed after it ([`analyze`]); and if there was
/// any, the proxy must have answered no 5xx at all, so that a 404 is the only answer rmcp
/// can have seen.
fn call_failure(error: &str) -> &'static str {
    if error == "Transport closed" {
        "inferred"
    } else {
        "other"
    }
}

/// The phase and kind of a failed rmcp `connect`: `handshake` and `inferred` when the
/// session existed (its `initialize` was answered) and its `initialized` notification
/// failed, which rmcp reports as this text whatever the answer was; otherwise `initialize`
/// and `other`. Judged as [`call_failure`]'s are.
fn init_failure(error: &str) -> (&'static str, &'static str) {
    if error.contains("when send initialized notification") {
        ("handshake", "inferred")
    } else {
        ("initialize", "other")
    }
}

/// rmcp clients printing the soak scripts' lines: 9 workers calling in a loop, and a new
/// short session every 25 ms. rmcp re-initializes on a 404 by itself; a worker sees that as a
/// reply from a new session (count 1, another replica), reported as the end of its session.
/// A call in flight when its replica died fails instead, its answer cut (see [`RESUMES`]).
/// A failure line says the replica the session's `initialize` named (`on`, if it got that
/// far) and how many lines there were when the session began (`since`).
fn rmcp_soak(
    url: &str,
    lines: Lines,
) -> (Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinSet<()>) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(9));
    let mut tasks = tokio::task::JoinSet::new();
    // Each line says when (ms into the soak), for whoever reads a failure.
    let started = Instant::now();
    let emit = move |lines: &Lines, mut value: Value| {
        value["t"] = json!(started.elapsed().as_millis() as u64);
        lines.lock().unwrap().push(value.to_string());
    };
    for worker in 0..9 {
        let (url, lines, stop, ready) =
            (url.to_string(), lines.clone(), stop.clone(), ready.clone());
        tasks.spawn(async move {
            let mut session_no = 0;
            while !stop.load(Ordering::SeqCst) {
                let since = lines.lock().unwrap().len();
                let session = match rmcp_peers::connect_with(&url, true, Some(RESUMES)).await {
                    Ok(session) => session,
                    Err(e) => {
                        let (phase, kind) = init_failure(&e);
                        emit(&lines, json!({"worker": worker, "session": session_no, "error": e, "kind": kind, "phase": phase, "since": since}));
                        session_no += 1;
                        continue;
                    }
                };
                let on = rmcp_peers::replica_of(&session);
                let mut replica: Option<String> = None;
                let mut call = 0;
                while !stop.load(Ordering::SeqCst) {
                    match rmcp_peers::whoami(&session).await {
                        Ok(reply) => {
                            if replica.as_ref().is_some_and(|r| *r != reply.replica) && reply.count == 1 {
                                emit(&lines, json!({"worker": worker, "session": session_no, "error": "re-initialized by rmcp after a 404", "kind": "gone"}));
                                session_no += 1;
                                call = 0;
                            }
                            replica = Some(reply.replica.clone());
                            emit(&lines, json!({"worker": worker, "session": session_no, "call": call, "replica": reply.replica, "count": reply.count}));
                            if session_no == 0 && call == 0 && ready.fetch_sub(1, Ordering::SeqCst) == 1 {
                                emit(&lines, json!({"ready": true}));
                            }
                            call += 1;
                        }
                        Err(e) => {
                            emit(&lines, json!({"worker": worker, "session": session_no, "error": e, "kind": call_failure(&e), "on": on, "since": since}));
                            session_no += 1;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = rmcp_peers::close(session).await;
            }
        });
    }
    let (url, starter_lines, starter_stop) = (url.to_string(), lines.clone(), stop.clone());
    tasks.spawn(async move {
        let mut starts = tokio::task::JoinSet::new();
        for no in 0.. {
            if starter_stop.load(Ordering::SeqCst) {
                break;
            }
            while ready.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (url, lines) = (url.clone(), starter_lines.clone());
            starts.spawn(async move {
                let since = lines.lock().unwrap().len();
                let line = match rmcp_peers::connect_with(&url, true, Some(RESUMES)).await {
                    Ok(session) => {
                        let on = rmcp_peers::replica_of(&session);
                        let line = match rmcp_peers::whoami(&session).await {
                            Ok(reply) => json!({"starter": no, "replica": reply.replica, "count": reply.count}),
                            Err(e) => json!({"starter": no, "error": e, "kind": call_failure(&e), "phase": "call", "on": on, "since": since}),
                        };
                        let _ = rmcp_peers::close(session).await;
                        line
                    }
                    Err(e) => {
                        let (phase, kind) = init_failure(&e);
                        json!({"starter": no, "error": e, "kind": kind, "phase": phase, "since": since})
                    }
                };
                emit(&lines, line);
            });
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        while starts.join_next().await.is_some() {}
    });
    (stop, tasks)
}

/// Waits (up to `limit`) until `done` holds of the lines printed so far.
async fn until(lines: &Lines, limit: Duration, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + limit;
    while !done(&lines.lock().unwrap()) {
        if Instant::now() > deadline {
            let so_far = lines.lock().unwrap().join("");
            panic!("waited {limit:?} for {what}; lines so far:\n{so_far}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 20 s) until the proxy's router sees the backend at `url` in `health`.
async fn until_health(running: &Running, url: &str, health: Health) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = running
            .proxy
            .router()
            .backends()
            .into_iter()
            .find(|b| *b.label == *url)
            .map(|b| b.health);
        if now == Some(health) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never became {health:?} (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a run showed.
#[derive(Debug, Default)]
struct Outcome {
    /// Sessions on the killed replica when it died.
    victims: usize,
    /// Of those, the ones told their session is gone (404, a cut stream, rmcp's re-init).
    told_gone: usize,
    /// Anything wrong: errors on live replicas' sessions, victims told something else,
    /// affinity violations, failed new sessions.
    faults: Vec<String>,
    /// New sessions that failed.
    failed_new: usize,
    /// Sessions served, new sessions started.
    sessions: usize,
    starts: usize,
    /// Failures whose words do not say what the client was told (see [`call_failure`]).
    inferred: usize,
}

/// How a session ended.
#[derive(Debug)]
struct Failure {
    /// What the client said.
    text: String,
    /// `gone` when the client was told its session is over (see the soaks); `inferred` when
    /// rmcp's words do not say what it was told (see [`call_failure`]).
    kind: String,
    /// After the test's `{"killing": true}` line (pushed just before the kill).
    after_kill: bool,
    /// Its handshake failed after `initialize` was answered (see [`init_failure`]).
    handshake: bool,
    /// The replica that answered its `initialize`, if the line says (rmcp).
    on: Option<String>,
    /// Whether the session began before the kill, if the line says (rmcp): before the test's
    /// `{"killed": true}` line, pushed once the victim was reaped.
    began_before_kill: Option<bool>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = if self.after_kill { "after" } else { "before" };
        write!(f, "{} ({}, {when} the kill", self.text, self.kind)?;
        if let Some(on) = &self.on {
            write!(f, ", on {on}")?;
        }
        if self.began_before_kill == Some(false) {
            f.write_str(", begun after it")?;
        }
        f.write_str(")")
    }
}

impl Failure {
    /// Whether this ends a session of the victim as it must end: told gone, after the kill,
    /// the session having begun before it.
    fn told_gone(&self) -> bool {
        matches!(self.kind.as_str(), "gone" | "inferred")
            && self.after_kill
            && self.began_before_kill != Some(false)
    }

    /// Whether this is a session of `victim` (`None`: the line does not say).
    fn on_victim(&self, victim: &str) -> Option<bool> {
        if self.handshake {
            // Begun before the kill and cut after it; the only replica the kill can cut.
            return Some(self.after_kill && self.began_before_kill == Some(true));
        }
        self.on.as_ref().map(|on| on == victim)
    }
}

/// One worker session: its replies (replica, count) and how it ended.
type Session = (Vec<(String, u64)>, Option<Failure>);

fn analyze(lines: &[String], victim: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let mut sessions: BTreeMap<(u64, u64), Session> = BTreeMap::new();
    let (mut killing, mut kill_line) = (false, None);
    for (index, line) in lines.iter().enumerate() {
        let value: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        if value["killing"] == true {
            killing = true;
            continue;
        }
        if value["killed"] == true {
            (killing, kill_line) = (true, Some(index));
            continue;
        }
        let failure = value.get("error").map(|error| Failure {
            text: error.to_string(),
            kind: value["kind"].as_str().unwrap_or("other").to_string(),
            after_kill: killing,
            handshake: value["phase"] == "handshake",
            on: value["on"].as_str().map(str::to_string),
            // (A line before `killed` is of a session that began before it.)
            began_before_kill: value["since"].as_u64().map(|since| match kill_line {
                Some(kill) => since as usize <= kill,
                None => killing,
            }),
        });
        if let Some(failure) = &failure {
            outcome.inferred += usize::from(failure.kind == "inferred");
        }
        if let Some(starter) = value.get("starter") {
            outcome.starts += 1;
            let Some(failure) = failure else {
                continue;
            };
            // A session that existed, then its replica died: a victim, which must be told it
            // is gone. Python and TypeScript lines do not name the replica: any session
            // whose call failed is taken for a victim, and must have been told.
            let victim_s = failure
                .on_victim(victim)
                .unwrap_or(value["phase"] == "call");
            if victim_s {
                outcome.victims += 1;
                if failure.told_gone() {
                    outcome.told_gone += 1;
                } else {
                    outcome.faults.push(format!(
                        "new session {starter}, a victim, was told {failure}"
                    ));
                }
            } else {
                outcome.failed_new += 1;
                outcome
                    .faults
                    .push(format!("new session {starter} failed: {failure}"));
            }
            continue;
        }
        let Some(worker) = value.get("worker").and_then(Value::as_u64) else {
            continue;
        };
        let session = value["session"].as_u64().expect("session");
        let entry = sessions.entry((worker, session)).or_default();
        match failure {
            Some(failure) => entry.1 = Some(failure),
            None => entry.0.push((
                value["replica"].as_str().expect("replica").to_string(),
                value["count"].as_u64().expect("count"),
            )),
        }
    }
    for ((worker, session), (replies, failure)) in &sessions {
        outcome.sessions += 1;
        let replica = replies.first().map(|(r, _)| r.as_str());
        for (i, (r, count)) in replies.iter().enumerate() {
            if Some(r.as_str()) != replica || *count != i as u64 + 1 {
                outcome.faults.push(format!(
                    "affinity violation in worker {worker} session {session}: {replies:?}"
                ));
                break;
            }
        }
        let Some(failure) = failure else {
            continue;
        };
        let victim_s = match replica {
            Some(r) => Some(r == victim),
            None => failure.on_victim(victim),
        };
        match victim_s {
            Some(true) => {
                outcome.victims += 1;
                if failure.told_gone() {
                    outcome.told_gone += 1;
                } else {
                    outcome.faults.push(format!(
                        "victim worker {worker} session {session} was told {failure}"
                    ));
                }
            }
            Some(false) if replica.is_some() || failure.on.is_some() => {
                outcome.faults.push(format!(
                    "collateral: worker {worker} session {session} on a live replica failed: \
                     {failure}"
                ));
            }
            _ => {
                outcome.failed_new += 1;
                outcome.faults.push(format!(
                    "worker {worker} session {session} failed before any reply: {failure}"
                ));
            }
        }
    }
    outcome
}

/// The crash tests run one at a time: each runs seven processes on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The whole scenario for one SDK, one at a time, failing if it takes over three minutes (it
/// takes seconds).
async fn crash_and_come_back(sdk: Sdk) {
    let _one = ONE_AT_A_TIME.lock().await;
    let limit = Duration::from_secs(180);
    // Dropped on the way out, every process it started is killed.
    if tokio::time::timeout(limit, scenario(sdk)).await.is_err() {
        panic!("{sdk:?}: the scenario did not end in {limit:?}");
    }
}

async fn scenario(sdk: Sdk) {
    let names = ["x1", "x2", "x3"];
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for name in names {
        let (port, proc) = spawn_replica(sdk, name, 0).await;
        ports.push(port);
        procs.push(Some(proc));
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let config = Config {
        backends: urls.clone(),
        health_interval: Some(Duration::from_millis(200)),
        shutdown_grace: Duration::from_millis(100),
        ..Config::default()
    };
    let running = Running::start(&config).await.expect("proxy starts");
    let url = running.url(sdk.path());
    let (victim, victim_index) = ("x2", 1);

    // A session of the victim's, held by the test, to present again once it is back.
    let raw = raw_client();
    let old_session = match sdk {
        Sdk::Python(PyMode::Sse) | Sdk::Node { sse: true } => None,
        _ => {
            let mcp = running.url("/mcp");
            let mut found = None;
            for _ in 0..12 {
                let id = raw_session(&raw, &mcp).await;
                let (status, reply, body) = raw_whoami(&raw, &mcp, &id).await;
                assert_eq!(status, 200, "{body}");
                if reply.expect("a reply").replica == victim {
                    found = Some(id);
                    break;
                }
            }
            Some(found.expect("a session on the victim"))
        }
    };

    let (soak, lines) = start_soak(sdk, &url).await;
    until(
        &lines,
        Duration::from_secs(30),
        "every worker's first reply",
        |l| {
            l.iter()
                .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["ready"] == true))
        },
    )
    .await;
    // Load for a moment, then SIGKILL.
    let before = lines.lock().unwrap().len();
    until(&lines, Duration::from_secs(10), "some load", |l| {
        l.len() > before + 50
    })
    .await;
    let victim_id = running
        .proxy
        .router()
        .backends()
        .iter()
        .find(|b| *b.label == urls[victim_index])
        .expect("the victim's backend")
        .id;
    // Two lines: a session may begin between the first and the kill, on the victim.
    let mark = |line: Value| lines.lock().unwrap().push(line.to_string());
    mark(json!({"killing": true}));
    procs[victim_index].take().expect("running").kill();
    mark(json!({"killed": true}));
    until_health(&running, &urls[victim_index], Health::Down).await;
    // Let the load run on the two live replicas, then start the victim again on its port.
    let at_kill = lines.lock().unwrap().len();
    until(
        &lines,
        Duration::from_secs(10),
        "load after the kill",
        |l| l.len() > at_kill + 100,
    )
    .await;
    let (port, proc) = spawn_replica(sdk, victim, ports[victim_index]).await;
    assert_eq!(port, ports[victim_index]);
    procs[victim_index] = Some(proc);
    until_health(&running, &urls[victim_index], Health::Healthy).await;
    let back = lines.lock().unwrap().len();
    until(
        &lines,
        Duration::from_secs(20),
        "a new session on the restarted replica",
        |l| {
            l[back..].iter().any(|l| {
                serde_json::from_str::<Value>(l)
                    .is_ok_and(|v| v.get("starter").is_some() && v["replica"] == victim)
            })
        },
    )
    .await;

    // The old session is still gone, whoever answers.
    if let Some(id) = old_session {
        let (status, _, body) = raw_whoami(&raw, &running.url("/mcp"), &id).await;
        assert_eq!(
            status, 404,
            "an old session of the restarted replica: {body}"
        );
    }
    stop_soak(soak).await;
    let lines = lines.lock().unwrap().clone();
    // Kept for whoever reads a failure: every client's line, in order.
    let kept = e2e::log_dir()
        .join(format!("crash-{sdk:?}.jsonl").replace([' ', '{', '}', ':', '(', ')'], ""));
    std::fs::write(&kept, lines.join("\n")).expect("write the clients' lines");
    let outcome = analyze(&lines, victim);
    let metrics = running.proxy.metrics();
    let bad_gateways = running.proxy.bad_gateways();
    eprintln!(
        "{sdk:?}: victims {}, told gone {}, faults {}, failed new sessions {}, inferred {}, \
         sessions {}, new sessions {}, 502s {bad_gateways}, owners down {}, keys lost {}, placements retried {}",
        outcome.victims,
        outcome.told_gone,
        outcome.faults.len(),
        outcome.failed_new,
        outcome.inferred,
        outcome.sessions,
        outcome.starts,
        metrics.owners_down,
        metrics.keys_lost,
        metrics.placements_retried,
    );
    assert!(outcome.faults.is_empty(), "{sdk:?}: {:#?}", outcome.faults);
    assert!(
        outcome.victims >= 1,
        "{sdk:?}: the kill hit no session: {outcome:?}"
    );
    assert_eq!(outcome.told_gone, outcome.victims, "{outcome:?}");
    assert_eq!(outcome.failed_new, 0, "{outcome:?}");
    // No 502 for the dead replica's requests: its sessions get 404, new ones go elsewhere. A
    // live replica may fail a request itself (the Python server resets the connection under
    // a POST that races its session's DELETE, which its client sends as it closes the
    // session); that 502 is the only honest answer, and no client saw a failure (above).
    assert_eq!(
        running.proxy.bad_gateways_of(victim_id),
        0,
        "{sdk:?}: the proxy answered 502 for the killed replica"
    );
    assert_eq!(metrics.rejected("owner_unreachable"), 0, "{metrics:?}");
    // rmcp did not say what it was told: no 5xx answered at all (the router's 503s, the
    // proxy's 502s, a backend's own) leaves a 404 as the only answer it can have seen.
    if outcome.inferred > 0 {
        assert_eq!(running.proxy.server_errors(), 0, "{sdk:?}: {outcome:?}");
    }
    assert_eq!(metrics.rejected("no_ready_backend"), 0, "{metrics:?}");
    assert!(metrics.owners_down >= 1, "{metrics:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_sessions_of_a_killed_replica_start_over_and_no_new_session_fails() {
    crash_and_come_back(Sdk::Rmcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_streamable_sessions_of_a_killed_replica_get_404_and_no_new_session_fails() {
    crash_and_come_back(Sdk::Python(PyMode::Streamable)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_legacy_sse_sessions_of_a_killed_replica_end_and_no_new_session_fails() {
    crash_and_come_back(Sdk::Python(PyMode::Sse)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_streamable_sessions_of_a_killed_replica_get_404_and_no_new_session_fails() {
    crash_and_come_back(Sdk::Node { sse: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_legacy_sse_sessions_of_a_killed_replica_end_and_no_new_session_fails() {
    crash_and_come_back(Sdk::Node { sse: true }).await;
}

/// The rules of [`analyze`] for failures whose words do not say what rmcp was told, on
/// made-up lines (no process): excused only on a session of the victim begun before the kill
/// and failed after it.
#[test]
fn a_wordless_rmcp_failure_is_excused_only_on_a_victim_session_cut_by_the_kill() {
    let reply = |worker: u64, replica: &str| {
        json!({"worker": worker, "session": 0, "call": 0, "replica": replica, "count": 1})
            .to_string()
    };
    let closed = |worker: u64, on: &str, since: usize| {
        json!({"worker": worker, "session": 0, "error": "Transport closed", "kind": "inferred",
               "on": on, "since": since})
        .to_string()
    };
    let handshake = |starter: u64, since: usize| {
        json!({"starter": starter, "error": "initialize via …: Transport channel closed, when \
               send initialized notification", "kind": "inferred", "phase": "handshake",
               "since": since})
        .to_string()
    };
    let killed = json!({"killed": true}).to_string();
    // Line 2 is the kill.
    let run = |after: Vec<String>| {
        let mut lines = vec![reply(1, "x2"), reply(2, "x1"), killed.clone()];
        lines.extend(after);
        analyze(&lines, "x2")
    };

    let fine = run(vec![closed(1, "x2", 0), handshake(7, 1)]);
    assert!(fine.faults.is_empty(), "{fine:?}");
    assert_eq!((fine.victims, fine.told_gone, fine.inferred), (2, 2, 2));

    // On a live replica, a fault whatever it says: known by its replies, or, before any
    // reply, by the replica its `initialize` named.
    let live = run(vec![closed(2, "x1", 1)]);
    assert!(live.faults[0].starts_with("collateral"), "{live:?}");
    let live_first_call = run(vec![closed(4, "x1", 1)]);
    assert!(
        live_first_call.faults[0].starts_with("collateral"),
        "{live_first_call:?}"
    );
    // Failed before the kill: the kill cannot have caused it.
    let early = analyze(&[closed(1, "x2", 0), killed.clone()], "x2");
    assert_eq!((early.victims, early.told_gone), (1, 0), "{early:?}");
    // A session begun after the kill must never fail, its handshake included.
    let late = run(vec![handshake(8, 3)]);
    assert_eq!(late.failed_new, 1, "{late:?}");
    let late_worker = run(vec![closed(3, "x2", 3)]);
    assert_eq!(
        (late_worker.victims, late_worker.told_gone),
        (1, 0),
        "{late_worker:?}"
    );
    // Begun between the line before the kill and the one after it: before the kill, told
    // gone; its failure may show before the `killed` line or after it.
    let killing = json!({"killing": true}).to_string();
    for lines in [
        vec![
            reply(1, "x2"),
            killing.clone(),
            closed(3, "x2", 2),
            killed.clone(),
        ],
        vec![
            reply(1, "x2"),
            killing.clone(),
            killed.clone(),
            closed(3, "x2", 2),
        ],
    ] {
        let between = analyze(&lines, "x2");
        assert!(between.faults.is_empty(), "{between:?}");
        assert_eq!((between.victims, between.told_gone), (1, 1), "{between:?}");
    }
    // And one begun after the `killed` line is not.
    let lines = vec![
        reply(1, "x2"),
        killing.clone(),
        killed.clone(),
        closed(3, "x2", 4),
    ];
    let after = analyze(&lines, "x2");
    assert_eq!((after.victims, after.told_gone), (1, 0), "{after:?}");
    assert!(after.faults[0].contains("begun after it"), "{after:?}");
}
