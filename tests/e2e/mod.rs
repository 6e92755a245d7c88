//! Shared helpers of the end-to-end tests: the proxy and rmcp peers of the examples, child
//! processes that cannot outlive a test, and the Python / Node peers.
//!
//! The Python and TypeScript SDKs are installed by `tests/e2e/setup.sh` (into `target/e2e/`);
//! the tests find them through `MCP_AFFINITY_PYTHON` (a venv's python with `mcp==2.3.0`) and
//! `MCP_AFFINITY_NODE_DIR` (a directory whose `node_modules` holds `@modelcontextprotocol/sdk`),
//! defaulting to where `setup.sh` puts them. A missing peer fails the test; it never skips.

#![allow(dead_code, clippy::disallowed_methods)]

#[path = "../../examples/axum_gateway.rs"]
pub mod axum_gateway;
#[path = "../../examples/common/proxy.rs"]
pub mod proxy;
#[path = "../../examples/common/rmcp_peers.rs"]
pub mod rmcp_peers;

/// Starts the proxy the suites run against: the hyper proxy of `examples/proxy.rs`, or, with
/// `MCP_AFFINITY_FRONT=axum`, the axum gateway of `examples/axum_gateway.rs` serving the data
/// plane on the same router (the admin API and maintenance stay the proxy's).
pub async fn start(config: &proxy::Config) -> proxy::Running {
    let started = match std::env::var("MCP_AFFINITY_FRONT").as_deref() {
        Ok("axum") => start_axum(config).await,
        Ok("hyper") | Err(_) => proxy::Running::start(config).await,
        Ok(other) => panic!("MCP_AFFINITY_FRONT={other:?}: expected hyper or axum"),
    };
    started.expect("proxy starts")
}

/// The axum gateway of `examples/axum_gateway.rs` serving the data plane on the proxy's
/// router (the admin API and maintenance stay the proxy's).
pub async fn start_axum(config: &proxy::Config) -> Result<proxy::Running, String> {
    let grace = config.shutdown_grace;
    proxy::Running::start_serving(config, move |proxy, listener, stopped| async move {
        let app = axum_gateway::app(proxy.router().clone());
        let stopped = futures_util::FutureExt::shared(stopped);
        let serve = axum::serve(listener, app).with_graceful_shutdown(stopped.clone());
        // axum waits for every connection to close; an SSE stream may never do so on its
        // own, so the grace period bounds the wait (the runtime ends the rest).
        tokio::select! {
            _ = serve => {}
            _ = async {
                stopped.await;
                tokio::time::sleep(grace).await;
            } => {}
        }
    })
    .await
}

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test with `msg` and how to install the peers.
#[track_caller]
pub fn missing_peer(msg: &str) -> ! {
    panic!(
        "{msg}\n\nThe end-to-end tests need the real MCP SDK peers: run `tests/e2e/setup.sh` \
         (Python venv with mcp==2.3.0 and @modelcontextprotocol/sdk 1.32.2 under target/e2e/), \
         or point MCP_AFFINITY_PYTHON / MCP_AFFINITY_NODE_DIR at existing installs."
    )
}

/// The repository's root: this harness is included by the root package's tests and by
/// workspace members' (`examples/pingora`), whose manifest directories lie below it.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("tests/e2e/setup.sh").is_file())
        .expect("the repository root above the manifest directory")
}

/// `tests/e2e/`.
pub fn here() -> PathBuf {
    root().join("tests/e2e")
}

fn e2e_dir() -> PathBuf {
    root().join("target/e2e")
}

/// Where child processes' stderr goes.
pub fn log_dir() -> PathBuf {
    let dir = e2e_dir().join("logs");
    std::fs::create_dir_all(&dir).expect("create target/e2e/logs");
    dir
}

/// The Python interpreter with `mcp==2.3.0` (checked once).
pub fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(find_python).clone()
}

fn find_python() -> PathBuf {
    let path = std::env::var_os("MCP_AFFINITY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| e2e_dir().join("venv/bin/python"));
    let ok = Command::new(&path)
        .args([
            "-c",
            "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '2.3.0')",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing_peer(&format!("no Python with mcp==2.3.0 at {}", path.display()));
    }
    path
}

/// The directory whose `node_modules` holds `@modelcontextprotocol/sdk` 1.32.2.
pub fn node_dir() -> PathBuf {
    let dir = std::env::var_os("MCP_AFFINITY_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| e2e_dir().join("node"));
    let manifest = dir.join("node_modules/@modelcontextprotocol/sdk/package.json");
    let version = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string));
    if version.as_deref() != Some("1.32.2") {
        missing_peer(&format!(
            "no @modelcontextprotocol/sdk 1.32.2 at {} (found {version:?})",
            manifest.display()
        ));
    }
    let node_ok = Command::new(node())
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        missing_peer("no `node` on PATH (or MCP_AFFINITY_NODE)");
    }
    dir
}

/// The node binary (`MCP_AFFINITY_NODE`, default `node`).
pub fn node() -> PathBuf {
    std::env::var_os("MCP_AFFINITY_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

/// A child process that is killed and reaped when dropped. Its stdin stays open while it
/// lives (the peers exit when it closes: a safety net if the test process dies).
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with piped stdin and stdout and stderr to `target/e2e/logs/<name>.log`.
    #[track_caller]
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let log = log_dir().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("create log file");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| missing_peer(&format!("cannot start {name} ({cmd:?}): {e}")));
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(BufReader::new),
            child: Some(child),
            log,
        }
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads one stdout line, failing after `timeout`.
    pub async fn read_line(&mut self, timeout: Duration) -> String {
        let mut stdout = self.stdout.take().expect("stdout");
        let read = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let n = stdout.read_line(&mut line);
            (n, line, stdout)
        });
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok((Ok(n), line, stdout))) if n > 0 => {
                self.stdout = Some(stdout);
                line
            }
            other => {
                let log = self.log();
                let what = match other {
                    Err(_) => "timed out".to_string(),
                    Ok(Ok((Ok(_), _, _))) => "stdout closed".to_string(),
                    Ok(Ok((Err(e), _, _))) => e.to_string(),
                    Ok(Err(e)) => e.to_string(),
                };
                self.kill();
                panic!("{}: no line on stdout ({what}); stderr:\n{log}", self.name);
            }
        }
    }

    /// Waits for the process to exit (killing it after `timeout`) and returns its stdout.
    pub async fn output(mut self, timeout: Duration) -> String {
        let mut stdout = self.stdout.take().expect("stdout");
        let reader = tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{}: still running after {timeout:?}; killed. stderr:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let out = reader.await.expect("reader");
        assert!(
            status.success(),
            "{}: exited with {status}; stdout:\n{out}\nstderr:\n{}",
            self.name,
            self.log()
        );
        out
    }

    /// Collects every stdout line, as it comes, on a thread of its own (a chatty process never
    /// blocks on a full pipe): the lines so far are in the returned list.
    pub fn collect_lines(&mut self) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut stdout = self.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push(std::mem::take(&mut line));
            }
        });
        lines
    }

    /// Writes `line` and a newline to the process's stdin.
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: write to stdin: {e}", self.name));
    }

    /// Closes the process's stdin (the peers stop when it closes).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits up to `timeout` for the process to exit; kills it after that. Returns whether it
    /// exited by itself, successfully.
    pub async fn exited(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills (SIGKILL on Unix) and reaps the process.
    pub fn kill(&mut self) {
        self.stdin.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Python replicas' transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PyMode {
    /// Streamable HTTP at `/mcp` (also 2026-07-28).
    Streamable,
    /// Legacy HTTP+SSE: `GET /sse`, `POST /messages/?session_id=`.
    Sse,
}

/// A Python `mcp` 2.3.0 server replica (`tests/e2e/py_replica.py`).
pub struct PyReplica {
    pub name: String,
    pub port: u16,
    pub proc: Proc,
}

impl PyReplica {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Starts Python replicas `<prefix>1..=n` at once and waits until each listens.
pub async fn python_replicas(prefix: &str, n: usize, mode: PyMode) -> Vec<PyReplica> {
    let python = python();
    let script = here().join("py_replica.py");
    let mut procs: Vec<(String, Proc)> = (1..=n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            let mode = match mode {
                PyMode::Streamable => "streamable",
                PyMode::Sse => "sse",
            };
            let proc = Proc::spawn(
                &format!("py-{name}"),
                Command::new(&python)
                    .arg(&script)
                    .args(["--name", &name, "--mode", mode]),
            );
            (name, proc)
        })
        .collect();
    let mut replicas = Vec::new();
    for (name, mut proc) in procs.drain(..) {
        let port = listening_port(&mut proc, &name).await;
        replicas.push(PyReplica { name, port, proc });
    }
    replicas
}

/// The port a peer reports (`LISTENING <port>`, after at most a few other lines), waited for up
/// to 30 s.
pub async fn listening_port(proc: &mut Proc, name: &str) -> u16 {
    for _ in 0..8 {
        let line = proc.read_line(Duration::from_secs(30)).await;
        // A test binary running as a peer prints it after its harness's `test … ... `.
        if let Some((_, port)) = line.trim().split_once("LISTENING ") {
            return port
                .parse()
                .unwrap_or_else(|_| panic!("{name}: unexpected line {line:?}"));
        }
    }
    panic!("{name}: no LISTENING line");
}

/// Starts one Python replica named `name` on `port` (0: any) and waits until it listens.
pub async fn python_replica(name: &str, mode: PyMode, port: u16) -> PyReplica {
    let mode = match mode {
        PyMode::Streamable => "streamable",
        PyMode::Sse => "sse",
    };
    let mut proc = Proc::spawn(
        &format!("py-{name}-{port}"),
        Command::new(python())
            .arg(here().join("py_replica.py"))
            .args(["--name", name, "--mode", mode, "--port", &port.to_string()]),
    );
    let port = listening_port(&mut proc, name).await;
    PyReplica {
        name: name.to_string(),
        port,
        proc,
    }
}

/// Starts one TypeScript replica named `name` on `port` (0: any) and waits until it listens.
pub async fn node_replica(name: &str, port: u16) -> TsReplica {
    let script = node_script("ts_replica.mjs");
    let mut proc = Proc::spawn(
        &format!("ts-{name}-{port}"),
        Command::new(node())
            .arg(&script)
            .arg(name)
            .arg(port.to_string()),
    );
    let port = listening_port(&mut proc, name).await;
    TsReplica {
        name: name.to_string(),
        port,
        proc,
    }
}

/// Runs `tests/e2e/py_clients.py` against `url` and returns its JSON lines.
pub async fn python_clients(
    url: &str,
    mode: &str,
    sessions: usize,
    calls: usize,
) -> Vec<serde_json::Value> {
    let proc = Proc::spawn(
        &format!("py-clients-{mode}"),
        Command::new(python())
            .arg(here().join("py_clients.py"))
            .args([
                url,
                "--mode",
                mode,
                "--sessions",
                &sessions.to_string(),
                "--calls",
                &calls.to_string(),
            ]),
    );
    json_lines(&proc.output(Duration::from_secs(60)).await)
}

/// Parses JSON lines (other lines are an error).
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Checks `whoami` replies (JSON objects with `client`, `replica`, `count`, in call order per
/// client): every client got `calls` replies, all from one replica, counting 1, 2, 3, ...
/// Returns the replica of each client. Panics on any error line or violation.
pub fn check_affinity(lines: &[serde_json::Value], clients: usize, calls: usize) -> Vec<String> {
    let mut per_client: Vec<Vec<(String, u64)>> = vec![Vec::new(); clients];
    for line in lines {
        if line.get("summary").is_some() {
            continue;
        }
        assert!(line.get("error").is_none(), "a client failed: {line}");
        let client = line["client"].as_u64().expect("client") as usize;
        let replica = line["replica"].as_str().expect("replica").to_string();
        let count = line["count"].as_u64().expect("count");
        per_client[client].push((replica, count));
    }
    per_client
        .iter()
        .enumerate()
        .map(|(client, replies)| {
            assert_eq!(replies.len(), calls, "client {client}: {replies:?}");
            let first = &replies[0].0;
            for (i, (replica, count)) in replies.iter().enumerate() {
                assert_eq!(
                    (replica, *count),
                    (first, i as u64 + 1),
                    "affinity violation for client {client}: {replies:?}"
                );
            }
            first.clone()
        })
        .collect()
}

/// GETs or POSTs the proxy's admin API and returns its JSON answer.
pub async fn admin(url: &str, method: &str) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())
        .expect("request");
    let response = client.request(request).await.expect("admin request");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "admin {url}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

/// How many distinct values.
pub fn distinct<T: Ord + Clone>(items: &[T]) -> usize {
    let mut v = items.to_vec();
    v.sort();
    v.dedup();
    v.len()
}

/// Reads everything from a reader (for small pipes).
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// A bare HTTP client for the tests' raw requests.
pub type RawClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// A pooled bare HTTP client.
pub fn raw_client() -> RawClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// POSTs a JSON-RPC message the way MCP clients do, with an optional session, and returns the
/// status, the headers and the whole body (per-request streams end after the answer).
pub async fn raw_post(
    client: &RawClient,
    url: &str,
    session: Option<&str>,
    body: &str,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let mut request = http::Request::post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request");
    let response = client.request(request).await.expect("raw request");
    let (head, body) = response.into_parts();
    let body = body.collect().await.expect("raw body").to_bytes();
    (
        head.status.as_u16(),
        head.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Opens a Streamable HTTP session by hand (initialize + initialized); returns its id.
pub async fn raw_session(client: &RawClient, url: &str) -> String {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
    let (status, headers, body) = raw_post(client, url, None, init).await;
    assert_eq!(status, 200, "initialize: {body}");
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no session id: {headers:?}"))
        .to_string();
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, body) = raw_post(client, url, Some(&session), note).await;
    assert_eq!(status, 202, "initialized: {body}");
    session
}

/// Calls `whoami` by hand in `session`; returns the status and, on 200, the reply.
pub async fn raw_whoami(
    client: &RawClient,
    url: &str,
    session: &str,
) -> (u16, Option<rmcp_peers::Reply>, String) {
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    let (status, _, body) = raw_post(client, url, Some(session), call).await;
    let reply = (status == 200).then(|| reply_in(&body)).flatten();
    (status, reply, body)
}

/// The `whoami` reply inside a JSON or SSE response body.
pub fn reply_in(body: &str) -> Option<rmcp_peers::Reply> {
    let json = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.contains("\"result\""))
        .unwrap_or(body.trim());
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let text = value["result"]["content"][0]["text"].as_str()?;
    rmcp_peers::parse_reply(text).ok()
}

/// A Node script of `tests/e2e/`, copied next to the `node_modules` it imports from.
pub fn node_script(name: &str) -> PathBuf {
    let dir = node_dir();
    let target = dir.join(name);
    // Copy, then rename: tests running at once never see a half-written script.
    let temp = dir.join(format!(
        ".{name}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::copy(here().join(name), &temp).expect("copy the node script");
    std::fs::rename(&temp, &target).expect("move the node script");
    target
}

/// A TypeScript SDK server replica (`tests/e2e/ts_replica.mjs`): Streamable HTTP at `/mcp`,
/// legacy HTTP+SSE at `/sse` and `/messages`.
pub struct TsReplica {
    pub name: String,
    pub port: u16,
    pub proc: Proc,
}

impl TsReplica {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Starts TypeScript replicas `<prefix>1..=n` and waits until each listens.
pub async fn node_replicas(prefix: &str, n: usize) -> Vec<TsReplica> {
    let script = node_script("ts_replica.mjs");
    let mut replicas = Vec::new();
    let procs: Vec<(String, Proc)> = (1..=n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            let proc = Proc::spawn(
                &format!("ts-{name}"),
                Command::new(node()).arg(&script).arg(&name),
            );
            (name, proc)
        })
        .collect();
    for (name, mut proc) in procs {
        let port = listening_port(&mut proc, &name).await;
        replicas.push(TsReplica { name, port, proc });
    }
    replicas
}

/// Runs `tests/e2e/ts_clients.mjs` against `url` and returns its JSON lines.
pub async fn node_clients(
    url: &str,
    mode: &str,
    sessions: usize,
    calls: usize,
) -> Vec<serde_json::Value> {
    let script = node_script("ts_clients.mjs");
    let proc = Proc::spawn(
        &format!("ts-clients-{mode}"),
        Command::new(node()).arg(script).args([
            url,
            "--mode",
            mode,
            "--sessions",
            &sessions.to_string(),
            "--calls",
            &calls.to_string(),
        ]),
    );
    json_lines(&proc.output(Duration::from_secs(60)).await)
}
