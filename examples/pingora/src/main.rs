//! An MCP reverse proxy on Cloudflare's [pingora](https://github.com/cloudflare/pingora) that
//! keeps every conversation on the replica that owns it, routing with `mcp-affinity`.
//!
//! ```sh
//! cargo run -p mcp-affinity-pingora-example -- --listen 127.0.0.1:8080 \
//!     --backend http://127.0.0.1:9001 --backend http://127.0.0.1:9002 --admin 127.0.0.1:8081
//! curl -s 127.0.0.1:8081/metrics      # the router's metrics (JSON)
//! ```
//!
//! `src/proxy.rs` maps the router's call protocol onto pingora's `ProxyHttp` hooks. Here: the
//! command line, the server and its services: the proxy, a background service that calls
//! `Router::maintain` and checks every backend's port once a second, and an optional admin
//! listener for the metrics. Backends are `http://` only (pingora is built without TLS); they
//! are fixed at start. SIGTERM stops it gracefully (2 s), SIGINT at once.

// The proxy owns the clock, the sockets and the threads the sans-IO router never touches.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    missing_debug_implementations
)]

// The requests a hop refuses to pass on, shared with the hyper proxy and the axum gateway
// (pingora strips the hop-by-hop headers itself).
#[allow(dead_code)]
#[path = "../../common/hop.rs"]
mod hop;
// Whether a backend died, probed as the hyper proxy probes it.
#[path = "../../common/probe.rs"]
mod probe;
mod proxy;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mcp_affinity::router::{Metrics, Probe, Router, Sealing, Undelivered};
use mcp_affinity::seal::Keyring;
use mcp_affinity::{BackendId, TenantId};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use proxy::McpProxy;

const USAGE: &str = "\
usage: mcp-pingora-proxy --listen ADDR --backend URL [--backend URL ...] [options]

  --listen ADDR            where to accept MCP clients (e.g. 127.0.0.1:8080)
  --backend URL            a backend replica, http://host:port (repeatable)
  --seal-key-file PATH     seal session ids with the keys in PATH (one per line, 64 hex
                           digits; the first seals, all open; read once at start): proxies
                           sharing the file route each other's sessions
  --admin ADDR             GET /metrics (JSON); no authentication: keep it on loopback
  --threads N              worker threads of the proxy (default: the CPUs)
  --exit-with-stdin        exit when standard input closes (for supervisors and tests)
";

struct Args {
    listen: String,
    backends: Vec<String>,
    seal_key_file: Option<String>,
    admin: Option<String>,
    threads: usize,
    exit_with_stdin: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        listen: String::new(),
        backends: Vec::new(),
        seal_key_file: None,
        admin: None,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        exit_with_stdin: false,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag}: missing value"));
        match flag.as_str() {
            "--listen" => parsed.listen = value()?,
            "--backend" => parsed.backends.push(value()?),
            "--seal-key-file" => parsed.seal_key_file = Some(value()?),
            "--admin" => parsed.admin = Some(value()?),
            "--threads" => {
                let n = value()?;
                parsed.threads = n
                    .parse()
                    .ok()
                    .filter(|&threads: &usize| threads > 0)
                    .ok_or(format!("--threads: {n:?} (at least 1)"))?;
            }
            "--exit-with-stdin" => parsed.exit_with_stdin = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if parsed.listen.is_empty() || parsed.backends.is_empty() {
        return Err("--listen and at least one --backend are required".into());
    }
    Ok(parsed)
}

/// `http://host:port` (a trailing `/` allowed) as a socket address.
fn backend_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("http://").ok_or(format!(
        "backend {url:?}: only http:// backends are supported"
    ))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(format!("backend {url:?}: a path prefix is not supported"));
    }
    authority
        .to_socket_addrs()
        .map_err(|e| format!("backend {url:?}: {e}"))?
        .next()
        .ok_or(format!("backend {url:?}: no address"))
}

/// A keyring from a key file, and a sealing set up with it (the nonce seed from the standard
/// library's random hash keys: no crate needed for 12 bytes).
fn sealing(path: &str) -> Result<Sealing, String> {
    use std::hash::{BuildHasher, Hasher};
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let keyring = Keyring::from_lines(&text).map_err(|e| format!("{path}: {e}"))?;
    let word = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            .to_le_bytes()
    };
    let mut seed = [0; 12];
    seed[..8].copy_from_slice(&word());
    seed[8..].copy_from_slice(&word()[..4]);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    Ok(Sealing::new(keyring, seed, Instant::now(), unix))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mcp-pingora-proxy: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("mcp-pingora-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<std::convert::Infallible, String> {
    log::set_logger(&StderrLogger).map_err(|e| e.to_string())?;
    log::set_max_level(log::LevelFilter::Warn);

    let mut builder = Router::builder();
    if let Some(path) = &args.seal_key_file {
        builder = builder.sealing(sealing(path)?);
    }
    let router = Arc::new(builder.build());
    let mut addrs = Vec::new();
    let mut backends = Vec::new();
    for url in &args.backends {
        let addr = backend_addr(url)?;
        let id = router
            .add_backend(TenantId::DEFAULT, url, 1)
            .map_err(|e| format!("backend {url:?}: {e}"))?;
        let slot = usize::from(id.slot());
        if addrs.len() <= slot {
            addrs.resize(slot + 1, None);
        }
        addrs[slot] = Some(addr);
        backends.push((id, addr));
    }

    let conf = ServerConf {
        threads: args.threads,
        // SIGTERM: stop accepting, give requests in flight 2 s, then 1 s to wind down.
        grace_period_seconds: Some(2),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = McpProxy {
        router: router.clone(),
        addrs,
    };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args.listen);
    server.add_service(service);
    let upkeep = Upkeep {
        router: router.clone(),
        backends,
    };
    server.add_service(background_service("upkeep", upkeep));
    if let Some(addr) = &args.admin {
        let mut admin = Service::new("admin".to_string(), Admin { router });
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    if args.exit_with_stdin {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    server.run_forever()
}

/// Once a second: [`Router::maintain`] (idle keys expire, the keys of down and removed
/// backends are purged) and a TCP connect to every backend, whose result goes to
/// [`Router::report_health`] (a refused port is a backend down: its sessions get 404 at once;
/// one that answers again comes back with no keys).
struct Upkeep {
    router: Arc<Router>,
    backends: Vec<(BackendId, SocketAddr)>,
}

/// How long a health check's connection attempt may take (a timeout is a failed check).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let _ = self.router.maintain(Instant::now(), 4096);
            let mut probes = tokio::task::JoinSet::new();
            for &(id, addr) in &self.backends {
                probes.spawn(async move {
                    let connect = tokio::net::TcpStream::connect(addr);
                    let probe = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                        Ok(Ok(_)) => Probe::Up,
                        // Refused, or its host or network unreachable: nothing listens.
                        Ok(Err(e)) if Undelivered::from_io(&e) == Undelivered::Refused => {
                            Probe::Refused
                        }
                        _ => Probe::Failed,
                    };
                    (id, probe)
                });
            }
            while let Some(Ok((id, probe))) = probes.join_next().await {
                let _ = self.router.report_health(id, probe, Instant::now());
            }
        }
    }
}

/// The admin listener: `GET /metrics`.
struct Admin {
    router: Arc<Router>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let head = session.req_header();
        let (status, body) = if head.method == http::Method::GET && head.uri.path() == "/metrics" {
            (200, metrics_json(&self.router.metrics()).to_string())
        } else {
            (404, r#"{"error":"no such admin resource"}"#.to_string())
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body.into_bytes())
            .expect("a valid response")
    }
}

fn metrics_json(m: &Metrics) -> serde_json::Value {
    let rejected: serde_json::Map<String, serde_json::Value> = m
        .rejected
        .iter()
        .map(|(name, n)| ((*name).to_string(), (*n).into()))
        .collect();
    let backends: Vec<serde_json::Value> = m
        .backends
        .iter()
        .map(|b| {
            serde_json::json!({
                "id": b.id.to_string(),
                "url": &*b.label,
                "ready": b.ready(),
                "healthy": b.healthy,
                "sessions": b.sessions,
            })
        })
        .collect();
    serde_json::json!({
        "pinned": m.pinned,
        "placed": m.placed,
        "rejected": rejected,
        "rejected_total": m.rejected_total(),
        "keys_learned": m.keys_learned,
        "keys_forgotten": m.keys_forgotten,
        "keys_expired": m.keys_expired,
        "keys_purged": m.keys_purged,
        "keys_released": m.keys_released,
        "bodies_observed": m.bodies_observed,
        "owners_down": m.owners_down,
        "placements_retried": m.placements_retried,
        "tokens_sealed": m.tokens_sealed,
        "tokens_opened": m.tokens_opened,
        "table_len": m.table.len,
        "backends": backends,
    })
}

/// pingora logs through `log`: warnings and errors go to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("mcp-pingora-proxy: {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_plain_http_host_and_port() {
        assert_eq!(
            backend_addr("http://127.0.0.1:9001/").unwrap(),
            "127.0.0.1:9001".parse::<SocketAddr>().unwrap()
        );
        assert!(backend_addr("https://127.0.0.1:9001").is_err());
        assert!(backend_addr("http://127.0.0.1:9001/mcp").is_err());
    }

    #[test]
    fn listen_and_a_backend_are_required() {
        let args = |s: &str| parse(s.split_whitespace().map(String::from));
        assert!(args("--listen 127.0.0.1:1").is_err());
        let ok = args("--listen 127.0.0.1:1 --backend http://127.0.0.1:2 --threads 3").unwrap();
        assert_eq!((ok.backends.len(), ok.threads), (1, 3));
        assert!(args("--listen 127.0.0.1:1 --backend http://127.0.0.1:2 --bogus").is_err());
    }
}
