//! A reverse proxy for MCP servers that keeps every conversation on the replica that owns it.
//!
//! ```sh
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 \
//!     --backend http://127.0.0.1:9001 --backend http://127.0.0.1:9002 \
//!     --admin 127.0.0.1:8081 --idle-ttl 3600
//! curl -s 127.0.0.1:8081/metrics                      # the router's metrics (OpenMetrics)
//! curl -s 127.0.0.1:8081/metrics.json                 # … as JSON
//! curl -s -X POST 127.0.0.1:8081/backends/1/drain     # no new sessions on slot 1
//! curl -s -X POST 127.0.0.1:8081/backends/1/remove    # its sessions get 404 (clients re-initialize)
//! ```
//!
//! A fleet of proxies that share no state: give each the same key file and the same backend
//! names, and put any load balancer in front.
//!
//! ```sh
//! openssl rand -hex 32 > keys.txt     # or: head -c32 /dev/urandom | xxd -p -c64
//! proxy --listen 127.0.0.1:8080 --seal-key-file keys.txt \
//!     --backend a=http://10.0.0.7:9001 --backend b=http://10.0.0.8:9001
//! ```
//!
//! A fleet that shares a Redis: every proxy with the same `--redis` and backend names. Redis
//! carries what sealing cannot (2026-07-28 task ids, operator keys) and, unless the sessions
//! are sealed too, the sessions; with both flags, sessions need no Redis at all.
//!
//! ```sh
//! proxy --listen 127.0.0.1:8080 --redis redis://10.0.0.2:6379/0 \
//!     --backend a=http://10.0.0.7:9001 --backend b=http://10.0.0.8:9001
//! ```
//!
//! | keys | `--seal-key-file` | `--redis` | both |
//! |---|---|---|---|
//! | Streamable HTTP and legacy SSE sessions | sealed | in Redis | sealed |
//! | 2026-07-28 tasks, operator keys | this proxy only | in Redis | in Redis |
//!
//! While Redis does not answer, a key this proxy does not know gets 503 + `Retry-After`
//! (never 404); what it knows keeps routing, and new conversations keep starting.
//!
//! Flags are parsed by hand (no crate). Run with `--help` for all of them. Ctrl-C or SIGTERM
//! (what orchestrators send) stops accepting, gives in-flight requests a moment, and exits 0.

// The proxy owns the clock, the threads and the sockets.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "common/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use proxy::{Config, Proxy};

const USAGE: &str = "\
usage: proxy --listen ADDR --backend URL [--backend URL ...] [options]

  --listen ADDR              where to accept MCP clients (e.g. 127.0.0.1:8080)
  --backend [NAME=]URL       a backend replica, http://host:port[/prefix] (repeatable); NAME is how
                             every proxy of a fleet names it (default: the URL)
  --seal-key-file PATH       seal session ids with the keys in PATH (one per line, 64 hex digits;
                             the first seals, all open; re-read when it changes or on SIGHUP):
                             proxies sharing the file route each other's sessions
  --redis URL                share keys with the other proxies through Redis 7+ (redis://HOST:PORT[/DB]):
                             tasks and operator keys always, sessions unless sealed; while Redis is down,
                             keys this proxy does not know get 503 + Retry-After
  --redis-prefix PREFIX      prefix of the fleet's keys in Redis (default mcpa; the same on every proxy)
  --down-grace SECS          in a fleet, how long a session of a backend down here that may belong to
                             its crashed process or to its new one gets 503 before 404 (default: for
                             as long as the backend is down here); set it to the time the health
                             checks surely take to see a restarted backend
  --admin ADDR               admin API: GET /metrics (OpenMetrics), /metrics.json, GET /backends,
                             POST /backends?url=URL, POST /backends/<slot>/{drain,undrain,remove,restart}
                             (drain takes ?deadline=SECONDS); no authentication: keep it on loopback
  --sse-path PATH            legacy HTTP+SSE stream path (default /sse; \"none\" turns it off)
  --message-path PATH        legacy HTTP+SSE message path (default /messages; /messages/ too)
  --idle-ttl SECONDS         forget a session idle this long (default 3600; 0 = never)
  --pool-idle-timeout SECS   keep idle backend connections this long (default 4)
  --dedicated-connections N  at most N backend connections of one client connection each (opened
                             on its second request in a row to a backend; default 1024; 0 = off:
                             every request through the shared pool)
  --health-interval SECS     TCP health check period (default 1; 0 = off)
  --rewrite-host             send the backend's host:port as Host (default: the client's Host)
  --shutdown-grace SECS      on Ctrl-C or SIGTERM, time given to in-flight requests (default 2)
  --header-timeout SECS      close a client connection that takes longer to send a request's head,
                             counted from its start or from the end of the response before, so also
                             one idle that long between requests (default 30; 0 = never); streaming
                             responses are not cut
  --body-timeout SECS        answer 408 and close a client connection whose request body takes longer
                             than SECS, plus a millisecond for each byte of it, to arrive (so an upload
                             at 1,000 bytes a second or faster on average is never cut; default 30;
                             0 = never)
  --response-timeout SECS    answer 504 for a backend that takes longer to answer a request's head,
                             counted from when the request (and its body's upload) starts (default
                             0 = never; a tool that runs for minutes before answering JSON needs
                             more); response bodies and event streams are not timed
  --max-connections N        serve at most N client connections at once; more wait to be accepted
                             (default: the open-file limit, raised to its hard limit first, less
                             128, over 3; 0 = no bound); with --threads, N/threads each
  --threads N                serve clients on N threads, each polling its own connections (default:
                             one per CPU); 0 = one tokio work-stealing runtime for everything
  --bypass-router            send every request to the first backend without the router (no
                             affinity: only to measure what the router costs, scripts/hop-bench.sh)
";

struct Args {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    /// Threads of their own for client connections (0: on the main runtime).
    threads: usize,
    config: Config,
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or(format!("{flag}: not a number of seconds: {value:?}"))
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut admin = None;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut config = Config::default();
    let mut max_connections = None;
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        if flag == "--rewrite-host" {
            config.rewrite_host = true;
            continue;
        }
        if flag == "--bypass-router" {
            config.bypass_router = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--admin" => admin = Some(value.parse().map_err(|e| format!("--admin: {e}"))?),
            "--backend" => config.backends.push(value),
            "--seal-key-file" => config.seal_key_file = Some(value.into()),
            "--redis" => config.redis = Some(value),
            "--redis-prefix" => config.redis_prefix = value,
            "--sse-path" => config.sse_path = (value != "none").then_some(value),
            "--message-path" => config.message_path = value,
            "--idle-ttl" => {
                let ttl = seconds(&flag, &value)?;
                config.idle_ttl = (!ttl.is_zero()).then_some(ttl);
            }
            "--pool-idle-timeout" => config.pool_idle_timeout = seconds(&flag, &value)?,
            "--dedicated-connections" => {
                config.dedicated_connections = value
                    .parse()
                    .map_err(|_| format!("{flag}: not a count: {value:?}"))?;
            }
            "--health-interval" => {
                let every = seconds(&flag, &value)?;
                config.health_interval = (!every.is_zero()).then_some(every);
            }
            "--shutdown-grace" => config.shutdown_grace = seconds(&flag, &value)?,
            "--header-timeout" => {
                let timeout = seconds(&flag, &value)?;
                config.header_timeout = (!timeout.is_zero()).then_some(timeout);
            }
            "--body-timeout" => {
                let timeout = seconds(&flag, &value)?;
                config.body_timeout = (!timeout.is_zero()).then_some(timeout);
            }
            "--max-connections" => {
                let most: usize = value
                    .parse()
                    .map_err(|_| format!("{flag}: not a count: {value:?}"))?;
                max_connections = Some(most);
            }
            "--response-timeout" => {
                let timeout = seconds(&flag, &value)?;
                config.response_timeout = (!timeout.is_zero()).then_some(timeout);
            }
            "--down-grace" => config.down_grace = Some(seconds(&flag, &value)?),
            "--threads" => {
                threads = value
                    .parse()
                    .map_err(|_| format!("{flag}: not a count: {value:?}"))?;
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    if config.backends.is_empty() {
        return Err("at least one --backend is required".into());
    }
    // Raised whether or not the bound is given.
    let open_files = open_file_limit();
    config.max_connections = match max_connections {
        Some(0) => None,
        Some(most) => Some(most),
        None => Some(connections_within(open_files)),
    };
    Ok(Args {
        listen,
        admin,
        threads,
        config,
    })
}

/// The process's open-file limit, raised first to as far as it may go (the soft limit is
/// often 1,024, the hard one far higher). `None`: unknown.
fn open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            eprintln!("proxy: open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The client connections the proxy serves at once within `limit` open files: each may have
/// a backend connection of its own and an idle one in the pool, and 128 descriptors are kept
/// for the admin API (64), health checks, the shared store and the process itself.
fn connections_within(limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return usize::MAX;
    };
    let clients = limit.saturating_sub(128) / 3;
    usize::try_from(clients).unwrap_or(usize::MAX).max(1)
}

/// Re-reads the seal key file on SIGHUP, until `stop` completes.
#[cfg(unix)]
async fn reload_on_sighup(
    proxy: std::sync::Arc<Proxy>,
    stop: impl std::future::Future<Output = ()>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = hup.recv() => match proxy.reload_keys(true) {
                Ok(true) => eprintln!("proxy: seal keys reloaded"),
                Ok(false) => {}
                Err(e) => eprintln!("proxy: seal key file: {e} (keeping the keys in use)"),
            },
            _ = &mut stop => return,
        }
    }
}

/// Ctrl-C, or SIGTERM (how orchestrators stop a process).
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("proxy: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // With threads of their own for the clients, the main runtime has little to do: the admin
    // API, maintenance, signals.
    let runtime = match args.threads {
        0 => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("proxy: cannot start a runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let proxy = match Proxy::new(&args.config) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match std::net::TcpListener::bind(args.listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("proxy: listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = args.admin {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(admin) => {
                let addr = admin.local_addr().unwrap_or(addr);
                eprintln!("proxy: admin API on http://{addr}");
                tasks.spawn(proxy.clone().serve_admin(admin, stopped()));
            }
            Err(e) => {
                eprintln!("proxy: admin listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    tasks.spawn(proxy.clone().maintain(stopped()));
    eprintln!(
        "proxy: listening on http://{} for {} backend(s): {}",
        listener.local_addr().unwrap_or(args.listen),
        args.config.backends.len(),
        args.config.backends.join(", ")
    );
    if let Some(url) = &args.config.redis {
        eprintln!(
            "proxy: sharing keys through {url} under {:?}",
            args.config.redis_prefix
        );
    }
    let serving = match std::num::NonZeroUsize::new(args.threads) {
        Some(threads) => proxy
            .clone()
            .serve_on_threads(listener, threads, stopped.clone())
            .map(|serving| tasks.spawn(serving))
            .map_err(|e| format!("cannot start {threads} threads: {e}")),
        None => listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map(|listener| tasks.spawn(proxy.clone().serve(listener, stopped())))
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = serving {
        eprintln!("proxy: {e}");
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
        return ExitCode::FAILURE;
    }
    #[cfg(unix)]
    tasks.spawn(reload_on_sighup(proxy.clone(), stopped()));

    if let Err(e) = stop_signal().await {
        eprintln!("proxy: cannot wait for Ctrl-C or SIGTERM: {e}");
    }
    eprintln!("proxy: shutting down");
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    ExitCode::SUCCESS
}
