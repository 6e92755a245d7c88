//! A bounded load generator: N concurrent MCP sessions call `whoami` directly against one
//! backend and through the proxy, in the same run, and print calls/s and p50/p99 latency for
//! both, so the proxy's overhead is a measured ratio.
//!
//! ```sh
//! cargo run --release --example load                       # in-process rmcp replica + proxy
//! cargo run --release --example load -- --sessions 64 --calls 2000 --max-seconds 20
//! cargo run --release --example load -- --direct http://127.0.0.1:9001/mcp \
//!     --proxy http://127.0.0.1:8080/mcp                    # measure running servers instead
//! cargo run --release --example load -- --serve-replica 127.0.0.1:9001   # a replica alone
//! cargo run --release --example load -- --serve-plain 127.0.0.1:8090 --to 127.0.0.1:9001
//! cargo run --release --example load -- --serve-pinned 127.0.0.1:8091 --to 127.0.0.1:9001
//! cargo run --release --example load -- --serve-relay 127.0.0.1:8093 --to 127.0.0.1:9001
//! ```
//!
//! `scripts/hop-bench.sh` runs the side-by-side hop benchmark with these: one replica, and in
//! front of it the router's proxy as it runs by default, `pooled` (the same proxy with
//! `--dedicated-connections 0`), `shared` (the same proxy with `--threads 0`), `plain` (the
//! plain hop, `--serve-plain`), `pinned` (the plain hop with a backend connection per client
//! connection, `--serve-pinned`), `relay` (a TCP byte relay with no HTTP, `--serve-relay`),
//! optionally the router in pingora (`examples/pingora`) and HAProxy (skipped, loudly, when it
//! is not installed), each its own process, rounds alternated. `HOPS` picks which of them run
//! beside the router's proxy (by default, all but pingora).
//!
//! Each session is a real Streamable HTTP session opened by hand: raw HTTP POSTs (hyper-util,
//! pooled keep-alive connections) of `initialize`, `notifications/initialized`, then
//! `tools/call whoami` with its `Mcp-Session-Id`, each answer read to its end (rmcp answers
//! with a short SSE stream) and checked: right replica, next count. Raw requests rather than
//! rmcp clients, because rmcp's client opens a new TCP connection per request, which would
//! measure the client more than the proxy. Every phase is bounded in calls and in time.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/rmcp_peers.rs"]
mod rmcp_peers;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proxy::dedicated::{Drive, LookAhead};

type Http = Client<HttpConnector, Full<Bytes>>;

const USAGE: &str = "\
usage: load [--sessions N] [--calls C] [--max-seconds S] [--rounds R] [--rate CALLS_PER_S]
            [--direct URL --proxy URL] [--target NAME=URL]...
       load --serve-replica ADDR
       load --serve-plain ADDR --to HOST:PORT [--threads N]
       load --serve-pinned ADDR --to HOST:PORT [--threads N]
       load --serve-relay ADDR --to HOST:PORT [--threads N]

  --sessions N       concurrent sessions per phase (default 32)
  --calls C          whoami calls per session (default 1000)
  --max-seconds S    a phase stops after S seconds (default 15)
  --rounds R         rounds of every target in turn, each round starting one target later;
                     the best of each is kept, and the rounds' paired ratios (default 3)
  --rate R           offer R calls/s in all (each session calls on a fixed schedule) instead
                     of calling as fast as answers come; latency counts from the scheduled
                     time, so a late call's wait is in it (default: as fast as possible)
  --direct URL       a backend's MCP endpoint (default: an in-process rmcp replica)
  --proxy URL        the proxy's MCP endpoint in front of it (default: the in-process proxy)
  --target NAME=URL  another hop in front of the same backend, measured in the same rounds and
                     compared with the proxy (repeatable; e.g. haproxy=http://127.0.0.1:8092/mcp)
  --serve-replica ADDR             serve one rmcp replica at ADDR until SIGINT/SIGTERM
  --serve-plain ADDR --to HOST:PORT  serve the plain hyper hop (no router) until SIGINT/SIGTERM
  --serve-pinned ADDR --to HOST:PORT the plain hop with a backend connection per client
                                     connection, in its task (the hyper ceiling; not a proxy)
  --serve-relay ADDR --to HOST:PORT  a TCP byte relay, no HTTP (the floor of a tokio hop)
  --threads N        the hop's threads, each polling its own connections, as the proxy's
                     --threads (default: one per CPU; 0 = one tokio work-stealing runtime)
";

struct Args {
    sessions: usize,
    calls: usize,
    max: Duration,
    rounds: usize,
    rate: Option<f64>,
    direct: Option<String>,
    proxy: Option<String>,
    targets: Vec<(String, String)>,
    serve_replica: Option<String>,
    serve: Option<(Hop, String)>,
    to: Option<String>,
    threads: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        sessions: 32,
        calls: 1000,
        max: Duration::from_secs(15),
        rounds: 3,
        rate: None,
        direct: None,
        proxy: None,
        targets: Vec::new(),
        serve_replica: None,
        serve: None,
        to: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--sessions" => args.sessions = number()?.max(1),
            "--calls" => args.calls = number()?.max(1),
            "--rounds" => args.rounds = number()?.max(1),
            "--max-seconds" => args.max = Duration::from_secs(number()? as u64),
            "--rate" => match value.parse::<f64>() {
                // From one call an hour to a billion a second.
                Ok(rate) if (1.0 / 3600.0..=1e9).contains(&rate) => args.rate = Some(rate),
                _ => {
                    return Err(format!(
                        "--rate {value}: expected calls per second, 1/3600 to 1e9"
                    ));
                }
            },
            "--direct" => args.direct = Some(value),
            "--proxy" => args.proxy = Some(value),
            "--target" => match value.split_once('=') {
                Some((name, url)) => args.targets.push((name.to_string(), url.to_string())),
                None => return Err(format!("--target {value}: expected NAME=URL")),
            },
            "--serve-replica" => args.serve_replica = Some(value),
            "--serve-plain" | "--serve-pinned" | "--serve-relay" => {
                let hop = match flag.as_str() {
                    "--serve-plain" => Hop::Plain,
                    "--serve-pinned" => Hop::Pinned,
                    _ => Hop::Relay,
                };
                if args.serve.replace((hop, value)).is_some() {
                    return Err("one of --serve-plain, --serve-pinned, --serve-relay".into());
                }
            }
            "--to" => args.to = Some(value),
            "--threads" => args.threads = number()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.direct.is_some() != args.proxy.is_some() {
        return Err("--direct and --proxy go together".into());
    }
    Ok(args)
}

/// The hops `load` serves without a router, beside the proxy, to measure it against.
#[derive(Clone, Copy)]
enum Hop {
    Plain,
    Pinned,
    Relay,
}

impl Hop {
    fn name(self) -> &'static str {
        match self {
            Hop::Plain => "plain",
            Hop::Pinned => "pinned",
            Hop::Relay => "relay",
        }
    }
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    calls: usize,
    errors: usize,
    violations: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

async fn post(
    http: &Http,
    url: &str,
    session: Option<&str>,
    body: &'static str,
) -> Result<(u16, Option<String>, Bytes), String> {
    let mut request = http::Request::post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let request = request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .map_err(|e| e.to_string())?;
    let response = http.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, session, body))
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"load","version":"0"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
const WHOAMI: &str =
    r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;

/// The `whoami` reply in a JSON or SSE answer.
fn reply_of(body: &[u8]) -> Option<rmcp_peers::Reply> {
    let text = std::str::from_utf8(body).ok()?;
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.contains("\"result\""))
        .unwrap_or(text.trim());
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    rmcp_peers::parse_reply(value["result"]["content"][0]["text"].as_str()?).ok()
}

/// A session's call schedule at a fixed offered rate: a call every `every`, the first after
/// `offset` (sessions are spread over one period).
#[derive(Clone, Copy)]
struct Pace {
    every: Duration,
    offset: Duration,
}

/// One session: initialize, then `calls` whoami calls until `deadline` (as fast as answers
/// come, or on `pace`'s schedule); DELETE at the end.
async fn session(
    http: Http,
    url: Arc<str>,
    calls: usize,
    deadline: Instant,
    pace: Option<Pace>,
) -> Phase {
    let mut phase = Phase::default();
    let id = match post(&http, &url, None, INITIALIZE).await {
        Ok((200, Some(id), _)) => id,
        _ => {
            phase.errors += 1;
            return phase;
        }
    };
    if !matches!(
        post(&http, &url, Some(&id), INITIALIZED).await,
        Ok((202, ..))
    ) {
        phase.errors += 1;
        return phase;
    }
    let mut track = rmcp_peers::Track::default();
    let first = pace.map(|p| Instant::now() + p.offset);
    for k in 0..calls {
        // On a schedule, a call that is late (the previous answer came after this one was
        // due) counts from when it was due: its wait is latency too (no coordinated
        // omission). One that is early waits, and counts from when the timer let it go.
        let started = match pace
            .zip(first)
            .map(|(p, first)| first + p.every.mul_f64(k as f64))
        {
            Some(due) if due > Instant::now() => {
                tokio::time::sleep_until(due.into()).await;
                Instant::now()
            }
            Some(due) => due,
            None => Instant::now(),
        };
        if Instant::now() >= deadline {
            break;
        }
        match post(&http, &url, Some(&id), WHOAMI).await {
            Ok((200, _, body)) => {
                phase.latencies.push(started.elapsed());
                phase.calls += 1;
                match reply_of(&body) {
                    Some(reply) => {
                        if !track.record(&reply) {
                            phase.violations += 1;
                        }
                    }
                    None => phase.errors += 1,
                }
            }
            _ => phase.errors += 1,
        }
    }
    let delete = http::Request::delete(&*url)
        .header("mcp-session-id", &id)
        .body(Full::new(Bytes::new()))
        .expect("a request");
    if let Ok(response) = http.request(delete).await {
        let _ = response.into_body().collect().await;
    }
    phase
}

async fn run_phase(
    url: &str,
    sessions: usize,
    calls: usize,
    max: Duration,
    rate: Option<f64>,
) -> Phase {
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let url: Arc<str> = url.into();
    let started = Instant::now();
    let deadline = started + max;
    let every = rate.map(|rate| Duration::from_secs_f64(sessions as f64 / rate));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let pace = every.map(|every| Pace {
            every,
            offset: every.mul_f64(i as f64 / sessions as f64),
        });
        set.spawn(session(http.clone(), url.clone(), calls, deadline, pace));
    }
    let mut total = Phase::default();
    while let Some(joined) = set.join_next().await {
        let phase = joined.unwrap_or_else(|_| Phase {
            errors: 1,
            ..Phase::default()
        });
        total.calls += phase.calls;
        total.errors += phase.errors;
        total.violations += phase.violations;
        total.latencies.extend(phase.latencies);
    }
    total.elapsed = started.elapsed();
    total.latencies.sort_unstable();
    total
}

/// Serves `listener` with `serve` (an accept loop) until the process exits: on the current
/// runtime (`threads` 0), or, as the proxy's `--threads` does, on `threads` threads of their
/// own, each with a single-threaded runtime accepting from the same socket.
fn accept_on<F, S>(listener: std::net::TcpListener, threads: usize, serve: F) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpListener) -> S + Send + Clone + 'static,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    listener.set_nonblocking(true)?;
    if threads == 0 {
        tokio::spawn(serve(tokio::net::TcpListener::from_std(listener)?));
        return Ok(());
    }
    for _ in 0..threads {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (listener, serve) = (listener.try_clone()?, serve.clone());
        std::thread::spawn(move || {
            runtime.block_on(async move {
                if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                    serve(listener).await;
                }
            })
        });
    }
    Ok(())
}

/// The same hyper server + pooled hyper-util client hop as the proxy, without the router: the
/// floor any proxy pays for the extra HTTP hop. Serves until the process exits, on `threads`
/// threads ([`accept_on`]).
fn plain_proxy(
    listen: &str,
    backend: impl std::fmt::Display + Send + Sync + Copy + 'static,
    threads: usize,
) -> std::io::Result<String> {
    use hyper_util::rt::TokioIo;
    let listener = std::net::TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let client: Client<HttpConnector, hyper::body::Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    accept_on(listener, threads, move |listener| {
        let client = client.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let client = client.clone();
                let service = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        let client = client.clone();
                        async move {
                            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                            *req.uri_mut() =
                                format!("http://{backend}{path}").parse().expect("a URI");
                            client.request(req).await
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        }
    })?;
    Ok(format!("http://{addr}/mcp"))
}

/// The plain hop with one backend connection per client connection, driven in the client
/// connection's own task (hyper's low-level `client::conn::http1`), where the pooled client
/// hands each request to the backend connection's task and the answer back; its answers are
/// looked ahead in as the proxy's dedicated connections' are ([`LookAhead`]), so an answer's
/// last chunk and the end of its body go in one write. Not a proxy anyone should run (one
/// backend connection per client connection, opened at accept, none shared), but what a
/// hyper hop costs without that hand-off: the ceiling for one built on hyper. Serves until
/// the process exits, on `threads` threads ([`accept_on`]).
fn pinned_proxy(listen: &str, backend: &'static str, threads: usize) -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    accept_on(listener, threads, move |listener| async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(pinned_connection(stream, backend));
        }
    })?;
    Ok(format!("http://{addr}/mcp"))
}

type PinnedConnection = hyper::client::conn::http1::Connection<
    hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    hyper::body::Incoming,
>;

/// The pinned hop's backend connection: driven by its client connection's task, and by the
/// bodies of its answers as they look ahead (in the same task).
struct PinnedUpstream(std::sync::Mutex<Option<std::pin::Pin<Box<PinnedConnection>>>>);

impl Drive for PinnedUpstream {
    fn poll_drive(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future;
        let mut connection = self.0.lock().expect("never poisoned");
        match connection.as_mut().map(|open| open.as_mut().poll(cx)) {
            Some(std::task::Poll::Pending) => std::task::Poll::Pending,
            _ => {
                *connection = None;
                std::task::Poll::Ready(())
            }
        }
    }
}

/// One client connection of the pinned hop, with its own backend connection.
async fn pinned_connection(stream: tokio::net::TcpStream, backend: &'static str) {
    use hyper_util::rt::TokioIo;
    let Ok(upstream) = tokio::net::TcpStream::connect(backend).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let Ok((sender, connection)) =
        hyper::client::conn::http1::handshake::<_, hyper::body::Incoming>(TokioIo::new(upstream))
            .await
    else {
        return;
    };
    let upstream = Arc::new(PinnedUpstream(std::sync::Mutex::new(Some(Box::pin(
        connection,
    )))));
    // HTTP/1: one request at a time per client connection, so the lock is never contended,
    // and never held across an await.
    let sender = std::sync::Mutex::new(sender);
    let answers = upstream.clone();
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = path.parse().expect("a path");
            let answer = sender.lock().expect("never poisoned").send_request(req);
            let upstream = answers.clone();
            async move {
                let response = answer.await?;
                Ok::<_, hyper::Error>(response.map(|body| LookAhead::new(body, Some(upstream))))
            }
        });
    let server =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(server);
    let mut upstream_open = true;
    loop {
        tokio::select! {
            _ = &mut server => break,
            _ = std::future::poll_fn(|cx| upstream.poll_drive(cx)), if upstream_open => {
                upstream_open = false;
            }
        }
    }
}

/// A TCP relay: each client connection gets its own backend connection, and bytes are copied
/// both ways as they come, with no HTTP at all (no parsing, no routing, no header rewriting).
/// Not a proxy (nothing is checked or learned), but the least work any hop on tokio can do per
/// call: the floor under the pinned hop. Serves until the process exits, on `threads` threads
/// ([`accept_on`]).
fn relay(listen: &str, backend: &'static str, threads: usize) -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    accept_on(listener, threads, move |listener| async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
            });
        }
    })?;
    Ok(format!("http://{addr}/mcp"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, sessions: usize, p: &Phase) {
    println!(
        "{name:<8} {sessions:>8} {:>7} {:>6.2} {:>9.0} {:>8.3} {:>8.3} {:>6} {:>10}",
        p.calls,
        p.elapsed.as_secs_f64(),
        p.rate(),
        ms(p.percentile(0.50)),
        ms(p.percentile(0.99)),
        p.errors,
        p.violations
    );
}

/// Waits for SIGINT or SIGTERM.
async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `--serve-replica`, `--serve-plain`, `--serve-pinned` and `--serve-relay`: one server, until
/// a signal.
async fn serve_alone(args: &Args) -> Option<ExitCode> {
    if let Some(addr) = &args.serve_replica {
        let addr = match addr.parse() {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("load: --serve-replica {addr}: {e}");
                return Some(ExitCode::from(2));
            }
        };
        let replica = match rmcp_peers::Replica::start_on("r1", addr).await {
            Ok(replica) => replica,
            Err(e) => {
                eprintln!("load: replica on {addr}: {e}");
                return Some(ExitCode::FAILURE);
            }
        };
        println!("replica at {}", replica.url());
        stopped().await;
        replica.kill().await;
        return Some(ExitCode::SUCCESS);
    }
    let (hop, listen) = args.serve.as_ref()?;
    let Some(to) = args.to.clone() else {
        eprintln!("load: --serve-{} needs --to HOST:PORT", hop.name());
        return Some(ExitCode::from(2));
    };
    let to: &'static str = Box::leak(to.into_boxed_str());
    let served = match hop {
        Hop::Plain => plain_proxy(listen, to, args.threads),
        Hop::Pinned => pinned_proxy(listen, to, args.threads),
        Hop::Relay => relay(listen, to, args.threads),
    };
    match served {
        Ok(url) => println!("{} hop at {url} -> {to}", hop.name()),
        Err(e) => {
            eprintln!("load: {} hop on {listen}: {e}", hop.name());
            return Some(ExitCode::FAILURE);
        }
    }
    stopped().await;
    Some(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("load: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(code) = serve_alone(&args).await {
        return code;
    }
    // In-process by default: one rmcp replica, and the proxy in front of it alone, so both
    // phases reach the same server and differ only by the proxy hop.
    let mut local = None;
    let mut plain = None;
    let (direct, proxied) = match (&args.direct, &args.proxy) {
        (Some(direct), Some(proxy)) => (direct.clone(), proxy.clone()),
        _ => {
            let replica = match rmcp_peers::Replica::start("r1").await {
                Ok(replica) => replica,
                Err(e) => {
                    eprintln!("load: start replica: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let config = proxy::Config {
                backends: vec![replica.url()],
                shutdown_grace: Duration::from_millis(100),
                ..proxy::Config::default()
            };
            let running = match proxy::Running::start(&config).await {
                Ok(running) => running,
                Err(e) => {
                    eprintln!("load: start proxy: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let urls = (format!("{}/mcp", replica.url()), running.url("/mcp"));
            plain = plain_proxy("127.0.0.1:0", replica.addr, 0).ok();
            local = Some((replica, running));
            urls
        }
    };
    println!(
        "{} sessions x {} whoami calls per phase (max {} s), {} round(s); raw HTTP/1.1 POSTs, pooled; {}",
        args.sessions,
        args.calls,
        args.max.as_secs(),
        args.rounds,
        match args.rate {
            Some(rate) => format!("{rate} calls/s offered, on a schedule"),
            None => "as fast as answers come".into(),
        }
    );
    println!("direct:  {direct}\nproxied: {proxied} (the router's proxy)");
    if let Some(plain) = &plain {
        println!("plain:   {plain} (the same hyper hop without a router)");
    }

    // Warm up both paths (connections, allocator, caches).
    let _ = run_phase(&direct, 4, 20, Duration::from_secs(2), None).await;
    let _ = run_phase(&proxied, 4, 20, Duration::from_secs(2), None).await;

    let mut targets = vec![
        ("direct".to_string(), direct.clone()),
        ("proxied".to_string(), proxied.clone()),
    ];
    if let Some(plain) = &plain {
        targets.push(("plain".to_string(), plain.clone()));
    }
    for (name, url) in &args.targets {
        println!("{name}: {url}");
        let _ = run_phase(url, 4, 20, Duration::from_secs(2), None).await;
        targets.push((name.clone(), url.clone()));
    }
    let mut best: Vec<Option<Phase>> = targets.iter().map(|_| None).collect();
    // Each round's calls/s, p50 and p99 per target, to pair rounds.
    let mut per_round: Vec<Vec<[f64; 3]>> = targets.iter().map(|_| Vec::new()).collect();
    let mut failed = false;
    println!(
        "\n{:<8} {:>8} {:>7} {:>6} {:>9} {:>8} {:>8} {:>6} {:>10}",
        "target",
        "sessions",
        "calls",
        "secs",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "violations"
    );
    for round in 0..args.rounds {
        // Each round starts one target later, so that no hop always runs right after the
        // same other one (what a phase leaves behind, such as connections still closing,
        // then weighs on every hop alike).
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let (name, url) = &targets[i];
            let phase = run_phase(url, args.sessions, args.calls, args.max, args.rate).await;
            row(name, args.sessions, &phase);
            if let Some(rate) = args.rate.filter(|&rate| phase.rate() < 0.95 * rate) {
                println!(
                    "  ^ {name} kept up with {:.0} of the {rate} calls/s offered: saturated, so \
                     its latency measures a backlog, not the hop (offer less)",
                    phase.rate()
                );
            }
            failed |= phase.errors > 0 || phase.violations > 0;
            per_round[i].push([
                phase.rate(),
                ms(phase.percentile(0.5)),
                ms(phase.percentile(0.99)),
            ]);
            // The best round: the most calls/s as fast as answers come; at a fixed rate
            // (where every hop that keeps up makes the same calls/s) the lowest p50.
            let better = |b: &Phase| match args.rate {
                None => phase.rate() > b.rate(),
                Some(_) => phase.percentile(0.5) < b.percentile(0.5),
            };
            if best[i].as_ref().is_none_or(better) {
                best[i] = Some(phase);
            }
        }
    }
    let (Some(d), Some(p)) = (&best[0], &best[1]) else {
        return ExitCode::FAILURE;
    };
    for ((name, _), other) in targets.iter().zip(&best).skip(2) {
        let Some(other) = other else { continue };
        println!(
            "proxied vs {name}: calls/s {:.2}x, p50 {:.2}x, p99 {:.2}x ({name}: {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms)",
            p.rate() / other.rate(),
            ms(p.percentile(0.5)) / ms(other.percentile(0.5)),
            ms(p.percentile(0.99)) / ms(other.percentile(0.99)),
            other.rate(),
            ms(other.percentile(0.5)),
            ms(other.percentile(0.99)),
        );
    }
    // Rounds run back to back, so each round's pair saw the same machine: the median of the
    // paired ratios is steadier than the ratio of the best rounds on a shared machine.
    for ((name, _), other) in targets.iter().zip(&per_round).skip(2) {
        let ratios = |m: usize| {
            let mut r: Vec<f64> = per_round[1]
                .iter()
                .zip(other)
                .map(|(p, o)| p[m] / o[m])
                .collect();
            r.sort_by(f64::total_cmp);
            let listed: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
            (
                r.get(r.len() / 2).copied().unwrap_or(f64::NAN),
                listed.join(" "),
            )
        };
        let ((rate, rates), (p50, _), (p99, _)) = (ratios(0), ratios(1), ratios(2));
        println!(
            "proxied vs {name}, median of the rounds' paired ratios: calls/s {rate:.2}x \
             (rounds, sorted: {rates}), p50 {p50:.2}x, p99 {p99:.2}x"
        );
    }
    if let Some(Some(plain)) = best.get(2).filter(|_| plain.is_some()) {
        println!(
            "\nplain hop (no router): {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms -> router proxy / plain hop throughput {:.2}",
            plain.rate(),
            ms(plain.percentile(0.5)),
            ms(plain.percentile(0.99)),
            p.rate() / plain.rate()
        );
    }
    println!(
        "best rounds: direct {:.0} calls/s, proxied {:.0} calls/s -> proxied/direct throughput {:.2}; \
         p50 {:.3} -> {:.3} ms (+{:.3}), p99 {:.3} -> {:.3} ms (+{:.3})",
        d.rate(),
        p.rate(),
        p.rate() / d.rate(),
        ms(d.percentile(0.5)),
        ms(p.percentile(0.5)),
        ms(p.percentile(0.5)) - ms(d.percentile(0.5)),
        ms(d.percentile(0.99)),
        ms(p.percentile(0.99)),
        ms(p.percentile(0.99)) - ms(d.percentile(0.99)),
    );
    if let Some((replica, running)) = local {
        let m = running.proxy.metrics();
        println!(
            "router: placed {} pinned {} learned {} forgotten {} rejected {}",
            m.placed,
            m.pinned,
            m.keys_learned,
            m.keys_forgotten,
            m.rejected_total()
        );
        running.shutdown().await;
        replica.kill().await;
    }
    if failed {
        eprintln!("load: errors or affinity violations");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
