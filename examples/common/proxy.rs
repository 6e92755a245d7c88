//! A reverse proxy for MCP on hyper 1, tokio and hyper-util, driving
//! [`mcp_affinity::router::Router`]: the code shared by `examples/proxy.rs`, the demo, the load
//! generator and the end-to-end tests (each includes this file with `#[path]`).
//!
//! Per request: `route` → forward to the chosen backend through a pooled hyper-util client (or
//! answer the rejection) → `on_response_head` → stream the body back through an
//! [`ObservedBody`] that shows chunks to the router and ends the exchange. Bodies are never
//! collected; `text/event-stream` answers get `X-Accel-Buffering: no`; there is no timeout on
//! a response stream; a client that goes away drops the backend's body at once.
//!
//! Out of band: an admin listener (metrics, add/drain/undrain/remove/restart backends), a
//! maintenance task (`Router::maintain` every second, TCP health checks), graceful shutdown.
//!
//! A fleet of proxies agrees on owners in two ways, alone or together:
//!
//! - **sealing** (`seal_key_file`): the two session eras (Streamable HTTP `Mcp-Session-Id`,
//!   legacy SSE `sessionId`) carry their owner in a sealed token; no shared state;
//! - **a shared Redis** (`redis`, through `mcp-affinity-redis`): 2026-07-28 task ids and
//!   operator keys always, and the sessions too when they are not sealed. A key this proxy
//!   does not know is looked up there (503 + `Retry-After` while Redis does not answer); what
//!   it learns is written there by a background task.

// The proxy owns the clock: it hands `Instant::now()` to the sans-IO router.
#![allow(clippy::disallowed_methods)]
// Each includer uses part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use mcp_affinity::body::ObservedBody;
use mcp_affinity::router::store::Looked;
use mcp_affinity::router::{
    BackendInfo, End, Exchange, HeadOutcome, Metrics, NewBackend, Probe, Rejection, Routed, Router,
    Sealing, SharedStore, Undelivered,
};
use mcp_affinity::seal::Keyring;
use mcp_affinity::table::KeyKind;
use mcp_affinity::table::MemoryTableConfig;
use mcp_affinity::{BackendId, TenantId};
use mcp_affinity_redis::{RedisStore, RedisStoreConfig, StoreMetrics};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// How the proxy is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Backends: base URLs (`http://host:port[/prefix]`), each optionally named
    /// `NAME=URL` (the name every proxy of a fleet gives the backend; default: the URL).
    pub backends: Vec<String>,
    /// A file of sealing keys, one per line as 64 hex digits (the first seals, all open):
    /// session ids are sealed, so that a fleet of proxies with the same file needs no shared
    /// state. Re-read when it changes, or on [`Proxy::reload_keys`].
    pub seal_key_file: Option<std::path::PathBuf>,
    /// The legacy HTTP+SSE stream path; `None` turns legacy SSE handling off.
    pub sse_path: Option<String>,
    /// The legacy HTTP+SSE message path; both the given and the trailing-slash form (or the
    /// form without it) are routed as messages.
    pub message_path: String,
    /// Idle time after which a learned key is forgotten (`None`: never).
    pub idle_ttl: Option<Duration>,
    /// How long an idle pooled backend connection is kept. Below the 5 s keep-alive of
    /// uvicorn (Python MCP servers), so the proxy never reuses a connection the backend is
    /// closing.
    pub pool_idle_timeout: Duration,
    /// Send the backend's authority as `Host` instead of the client's.
    pub rewrite_host: bool,
    /// TCP health checks of every backend at this interval (`None`: off).
    pub health_interval: Option<Duration>,
    /// On shutdown, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// A Redis the proxies of a fleet share (`redis://host:port[/db]`): keys this proxy does
    /// not know are looked up there, and what it learns is written there. Connected lazily:
    /// the proxy starts (and routes what it knows) while Redis is down.
    pub redis: Option<String>,
    /// The prefix of every key the fleet keeps in Redis (the same on every proxy).
    pub redis_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backends: Vec::new(),
            sse_path: Some("/sse".into()),
            message_path: "/messages".into(),
            idle_ttl: Some(Duration::from_secs(3600)),
            pool_idle_timeout: Duration::from_secs(4),
            rewrite_host: false,
            seal_key_file: None,
            health_interval: Some(Duration::from_secs(1)),
            shutdown_grace: Duration::from_secs(2),
            redis: None,
            redis_prefix: "mcpa".into(),
        }
    }
}

/// One backend as the proxy knows it: where to send, and a switch that ends its open streams
/// when it is removed.
struct Upstream {
    id: BackendId,
    url: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    /// A path prefix (no trailing slash; empty for none).
    prefix: String,
    /// Flipped to `true` when the backend is removed or restarted.
    gone: watch::Sender<bool>,
}

/// The proxy: a [`Router`], the backends' addresses by slot, a pooled client.
pub struct Proxy {
    router: Arc<Router>,
    upstreams: RwLock<Vec<Option<Upstream>>>,
    client: Client<HttpConnector, OutBody>,
    rewrite_host: bool,
    health_interval: Option<Duration>,
    shutdown_grace: Duration,
    /// 502 answers sent (the backend failed and the router could not decide for it).
    bad_gateways: std::sync::atomic::AtomicU64,
    /// The sealing key file and when it was last read.
    seal_keys: Option<(
        std::path::PathBuf,
        std::sync::Mutex<Option<std::time::SystemTime>>,
    )>,
    /// The shared store, if the fleet shares one.
    store: Option<RedisStore>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

fn message_paths(path: &str) -> Vec<String> {
    let trimmed = path.trim_end_matches('/');
    vec![trimmed.to_string(), format!("{trimmed}/")]
}

impl Proxy {
    /// A proxy with `config`'s router settings and backends.
    pub fn new(config: &Config) -> Result<Arc<Proxy>, String> {
        let table = MemoryTableConfig::new().with_idle_ttl(config.idle_ttl);
        let mut builder = Router::builder()
            .table_config(table)
            .sse_path(config.sse_path.as_deref())
            .message_paths(message_paths(&config.message_path));
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let mut seal_keys = None;
        if let Some(path) = &config.seal_key_file {
            let (keyring, modified) = read_keys(path)?;
            builder = builder.sealing(Sealing::new(keyring, seed(), Instant::now(), unix));
            seal_keys = Some((path.clone(), std::sync::Mutex::new(modified)));
        }
        let mut store = None;
        if let Some(url) = &config.redis {
            let shared = SharedStore::new(&config.redis_prefix, Instant::now(), unix);
            builder = builder.shared_store(shared);
            store = Some(
                RedisStore::open(url, RedisStoreConfig::default())
                    .map_err(|e| format!("--redis {url:?}: {e}"))?,
            );
        }
        let router = builder.build();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(connector);
        let proxy = Arc::new(Proxy {
            router: Arc::new(router),
            upstreams: RwLock::new(Vec::new()),
            client,
            rewrite_host: config.rewrite_host,
            health_interval: config.health_interval,
            shutdown_grace: config.shutdown_grace,
            bad_gateways: Default::default(),
            seal_keys,
            store,
        });
        for backend in &config.backends {
            match backend.split_once('=') {
                Some((name, url)) if !name.contains("://") => proxy.add_named(name, url)?,
                _ => proxy.add_backend(backend)?,
            };
        }
        Ok(proxy)
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The shared store, if the fleet shares one.
    pub fn store(&self) -> Option<&RedisStore> {
        self.store.as_ref()
    }

    /// Adds a backend by base URL (`http://host:port[/prefix]`), named by its URL.
    pub fn add_backend(&self, url: &str) -> Result<BackendId, String> {
        self.add_named(url, url)
    }

    /// Re-reads the sealing key file if it changed (or if `force`): the new keyring takes
    /// effect at once, for every request. A file that does not parse is reported and the
    /// keys in use are kept.
    pub fn reload_keys(&self, force: bool) -> Result<bool, String> {
        let Some((path, read_at)) = &self.seal_keys else {
            return Ok(false);
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut read_at = read_at.lock().unwrap();
        if !force && modified == *read_at {
            return Ok(false);
        }
        let (keyring, modified) = read_keys(path)?;
        self.router
            .set_keyring(keyring)
            .map_err(|e| e.to_string())?;
        *read_at = modified;
        Ok(true)
    }

    /// Adds a backend by base URL, with the name every proxy of the fleet gives it.
    pub fn add_named(&self, name: &str, url: &str) -> Result<BackendId, String> {
        let uri: Uri = url.parse().map_err(|e| format!("backend {url:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or(format!("backend {url:?}: no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(format!(
                "backend {url:?}: only http:// backends are supported"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or(format!("backend {url:?}: no host"))?;
        let prefix = uri.path().trim_end_matches('/').to_string();
        let mut upstreams = self.upstreams.write().unwrap();
        let id = self
            .router
            .add(NewBackend::new(TenantId::DEFAULT, url).name(name))
            .map_err(|e| e.to_string())?;
        let slot = usize::from(id.slot());
        if upstreams.len() <= slot {
            upstreams.resize_with(slot + 1, || None);
        }
        upstreams[slot] = Some(Upstream {
            id,
            url: url.into(),
            scheme,
            authority,
            prefix,
            gone: watch::Sender::new(false),
        });
        Ok(id)
    }

    /// The current id of a backend slot.
    pub fn backend_id(&self, slot: u16) -> Option<BackendId> {
        let upstreams = self.upstreams.read().unwrap();
        upstreams.get(usize::from(slot))?.as_ref().map(|u| u.id)
    }

    fn by_slot(&self, slot: u16) -> Result<BackendId, String> {
        self.backend_id(slot)
            .ok_or(format!("no backend in slot {slot}"))
    }

    /// Stops placing new conversations on a backend; with a deadline, its keys are revoked
    /// then.
    pub fn drain(&self, slot: u16, deadline: Option<Duration>) -> Result<BackendId, String> {
        let id = self.by_slot(slot)?;
        let now = Instant::now();
        self.router
            .drain_backend(id, deadline.map(|d| now + d), now)
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Makes a draining backend ready again.
    pub fn undrain(&self, slot: u16) -> Result<BackendId, String> {
        let id = self.by_slot(slot)?;
        self.router
            .undrain_backend(id, Instant::now())
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Removes a backend: the router rejects its keys from now on (404, owner gone) and purges
    /// them after its removal grace, and the proxy ends the streams still open to it. Returns
    /// the number of keys the backend owned.
    pub fn remove(&self, slot: u16) -> Result<usize, String> {
        let mut upstreams = self.upstreams.write().unwrap();
        let upstream = upstreams
            .get_mut(usize::from(slot))
            .and_then(Option::take)
            .ok_or(format!("no backend in slot {slot}"))?;
        let purged = self
            .router
            .remove_backend(upstream.id, Instant::now())
            .map_err(|e| e.to_string())?;
        upstream.gone.send_replace(true);
        Ok(purged)
    }

    /// A backend restarted: a new generation that inherits nothing; the streams open to the
    /// old one are ended.
    pub fn restart(&self, slot: u16) -> Result<BackendId, String> {
        let mut upstreams = self.upstreams.write().unwrap();
        let mut upstream = upstreams
            .get_mut(usize::from(slot))
            .and_then(Option::take)
            .ok_or(format!("no backend in slot {slot}"))?;
        let id = match self.router.restart_backend(upstream.id, Instant::now()) {
            Ok(id) => id,
            Err(e) => {
                upstreams[usize::from(slot)] = Some(upstream);
                return Err(e.to_string());
            }
        };
        let old = std::mem::replace(&mut upstream.gone, watch::Sender::new(false));
        old.send_replace(true);
        upstream.id = id;
        let slot = usize::from(id.slot());
        if upstreams.len() <= slot {
            upstreams.resize_with(slot + 1, || None);
        }
        upstreams[slot] = Some(upstream);
        Ok(id)
    }

    /// The router's metrics.
    pub fn metrics(&self) -> Metrics {
        self.router.metrics()
    }

    /// The backend's base URL by id (current generation only).
    pub fn url_of(&self, id: BackendId) -> Option<Arc<str>> {
        let upstreams = self.upstreams.read().unwrap();
        let upstream = upstreams.get(usize::from(id.slot()))?.as_ref()?;
        (upstream.id == id).then(|| upstream.url.clone())
    }

    /// The request URI on the backend, its authority, and its removal switch.
    fn target(&self, id: BackendId, uri: &Uri) -> Option<(Uri, Authority, watch::Receiver<bool>)> {
        let upstreams = self.upstreams.read().unwrap();
        let upstream = upstreams.get(usize::from(id.slot()))?.as_ref()?;
        if upstream.id != id {
            return None;
        }
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query: PathAndQuery = if upstream.prefix.is_empty() {
            path.parse().ok()?
        } else {
            format!("{}{path}", upstream.prefix).parse().ok()?
        };
        let uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()?;
        Some((uri, upstream.authority.clone(), upstream.gone.subscribe()))
    }

    /// Proxies one request.
    ///
    /// A request that could not be delivered is reported to the router, which answers what to
    /// do: place it again on another backend (a conversation start, a stateless call: its
    /// body, if small, was kept for that), or reject it (a pinned request whose owner refused
    /// the connection: its session is gone, 404). A request that failed once on its way, with
    /// the backend refusing connections since, had an owner that died with it: a pinned one
    /// gets the same 404, a conversation start is placed again.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let routed = self.router.route(&parts, Instant::now());
        let exchange = match self.looked_up(routed).await {
            Routed::Forward(exchange) => exchange,
            Routed::Reject(rejection) => return rejection_response(&rejection),
            Routed::Lookup(_) => unreachable!("looked up"),
        };
        // A sealed session id: the backend gets its own id back.
        exchange.rewrite_request(&mut parts);
        // Ends the exchange if this future is dropped (the client left before the head came).
        let mut guard = ExchangeGuard {
            router: &self.router,
            exchange: Some(exchange),
        };
        // A request that may be placed again (no protocol key) keeps a small body for that.
        let mut body = if protocol_key(guard.exchange()) {
            ReplayBody::Streamed(Some(body))
        } else {
            ReplayBody::keep(body).await
        };
        let uri = parts.uri.clone();
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
            parts
                .headers
                .append(HeaderName::from_static("x-forwarded-for"), ip);
        }
        let client_host = parts.headers.get(header::HOST).cloned();
        let response = loop {
            let backend = guard.exchange().backend();
            let Some((target, authority, gone)) = self.target(backend, &uri) else {
                // Removed between routing and here.
                return self.bad_gateway("backend removed");
            };
            let Some(attempt) = body.attempt() else {
                return self.bad_gateway("backend unreachable");
            };
            let mut head = parts.clone();
            head.uri = target;
            match (&client_host, self.rewrite_host) {
                (Some(host), false) => {
                    head.headers.insert(header::HOST, host.clone());
                }
                _ => {
                    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                        head.headers.insert(header::HOST, host);
                    }
                }
            }
            let error = match self
                .client
                .request(Request::from_parts(head, attempt))
                .await
            {
                Ok(response) => break (response, gone),
                Err(error) => error,
            };
            let why = match undelivered(&error) {
                Some(why) => why,
                // It may have reached the backend. If the backend refuses connections now, it
                // died with the request: the session of a pinned request is gone either way,
                // and a conversation start changed nothing that survived.
                None if (protocol_key(guard.exchange())
                    || guard.exchange().starts_conversation())
                    && self.refuses(backend).await =>
                {
                    Undelivered::Refused
                }
                // The client's own body failed (it went away mid-request): nobody to tell.
                None if client_failed(&error) => {
                    return text(StatusCode::BAD_REQUEST, "request body failed\n".into());
                }
                None => {
                    let why = format!("{} failed: {error:?}", guard.exchange().backend());
                    return self.bad_gateway(&why);
                }
            };
            let exchange = guard.take();
            match self.router.on_undelivered(exchange, why, Instant::now()) {
                Routed::Forward(next) => guard.exchange = Some(next),
                Routed::Reject(rejection) => return rejection_response(&rejection),
                Routed::Lookup(_) => unreachable!("a failed delivery is not looked up"),
            }
        };
        let (response, gone) = response;
        let (mut head, body) = response.into_parts();
        let mut exchange = guard.take();
        match self
            .router
            .on_response_head(&mut exchange, &mut head, Instant::now())
        {
            HeadOutcome::Replace(rejection) => {
                drop(body);
                self.router
                    .on_exchange_end(exchange, End::Aborted, Instant::now());
                return rejection_response(&rejection);
            }
            HeadOutcome::Forward | HeadOutcome::Observe => {}
            // `HeadOutcome` may grow; forwarding is the safe default.
            #[allow(unreachable_patterns)]
            _ => {}
        }
        strip_hop_by_hop(&mut head.headers);
        let event_stream = is_event_stream(&head.headers);
        let clock: fn() -> Instant = Instant::now;
        let observed = ObservedBody::new(body, self.router.clone(), exchange, clock);
        let body = if event_stream {
            head.headers.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
            // A stream may live for hours: end it when its backend is removed.
            UntilGone::new(observed, gone).boxed_unsync()
        } else {
            observed.boxed_unsync()
        };
        Response::from_parts(head, body)
    }

    /// A decision, with a key the router does not know looked up in the shared store first
    /// (within the store's lookup timeout; 503 + `Retry-After` when it does not answer).
    async fn looked_up(&self, routed: Routed) -> Routed {
        match &self.store {
            Some(store) => store.resolve(&self.router, routed).await,
            // The router asks only when a store is configured.
            None => match routed {
                Routed::Lookup(lookup) => {
                    self.router
                        .on_lookup(lookup, Looked::Unavailable, Instant::now())
                }
                routed => routed,
            },
        }
    }

    /// How many requests were answered 502.
    pub fn bad_gateways(&self) -> u64 {
        self.bad_gateways.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn bad_gateway(&self, why: &str) -> Response<ProxyBody> {
        self.bad_gateways
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        eprintln!("proxy: 502: {why}");
        bad_gateway(why)
    }

    /// Whether the backend refuses connections right now: a few quick TCP connects, 50 ms
    /// apart (a process killed a moment ago may still have its listening socket while its
    /// connections are reset).
    async fn refuses(&self, id: BackendId) -> bool {
        let Some(addr) = self.address_of(id) else {
            return false;
        };
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let connect = TcpStream::connect(&addr);
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(250), connect).await {
                if refused(&e) {
                    return true;
                }
            }
        }
        false
    }

    /// `host:port` of a backend.
    fn address_of(&self, id: BackendId) -> Option<String> {
        let upstreams = self.upstreams.read().unwrap();
        let upstream = upstreams.get(usize::from(id.slot()))?.as_ref()?;
        let port = upstream.authority.port_u16().unwrap_or(80);
        Some(format!("{}:{port}", upstream.authority.host()))
    }

    /// Accepts connections on `listener` until `shutdown` completes, then stops accepting and
    /// gives in-flight requests the grace period.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let grace = self.shutdown_grace;
        let proxy = self;
        serve_with(listener, shutdown, grace, move |req, peer| {
            let proxy = proxy.clone();
            async move { proxy.handle(req, peer).await }
        })
        .await;
    }

    /// Serves the admin API on `listener` until `shutdown` completes.
    pub async fn serve_admin(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let proxy = self;
        serve_with(listener, shutdown, Duration::ZERO, move |req, _| {
            let proxy = proxy.clone();
            async move { proxy.admin(req) }
        })
        .await;
    }

    /// Calls `Router::maintain` every second and, if on, checks every backend's TCP port,
    /// until `shutdown` completes; with a shared store, runs its sync task meanwhile (and
    /// lets it write what is queued, within its grace, on the way out).
    pub async fn maintain(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let sync = self
            .store
            .as_ref()
            .map(|store| store.spawn_sync(self.router.clone()));
        self.upkeep(shutdown).await;
        if let Some(sync) = sync {
            sync.shutdown().await;
        }
    }

    async fn upkeep(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => return,
            }
            let _ = self.router.maintain(Instant::now(), 4096);
            if let Err(e) = self.reload_keys(false) {
                eprintln!("proxy: seal key file: {e} (keeping the keys in use)");
            }
            if let Some(every) = self.health_interval {
                if last_check.elapsed() >= every {
                    last_check = Instant::now();
                    self.check_health().await;
                }
            }
        }
    }

    /// One round of TCP connect checks, all backends at once (500 ms each at most): a
    /// refused connection is [`Probe::Refused`] (nothing listens: the backend is down after a
    /// few), a timeout is [`Probe::Failed`] (it may be alive and overloaded).
    async fn check_health(&self) {
        let targets: Vec<BackendId> = {
            let upstreams = self.upstreams.read().unwrap();
            upstreams.iter().flatten().map(|u| u.id).collect()
        };
        let checks = targets.into_iter().filter_map(|id| {
            let addr = self.address_of(id)?;
            Some(async move {
                let connect = TcpStream::connect(addr);
                let probe = match tokio::time::timeout(Duration::from_millis(500), connect).await {
                    Ok(Ok(_)) => Probe::Up,
                    Ok(Err(e)) if refused(&e) => Probe::Refused,
                    _ => Probe::Failed,
                };
                (id, probe)
            })
        });
        let mut set = tokio::task::JoinSet::new();
        for check in checks {
            set.spawn(check);
        }
        while let Some(Ok((id, probe))) = set.join_next().await {
            let _ = self.router.report_health(id, probe, Instant::now());
        }
    }

    /// The admin API.
    ///
    /// - `GET /metrics`: the router's metrics as JSON (`?format=text`: `name value` lines)
    /// - `GET /backends`: the backends as JSON
    /// - `POST /backends?url=http://host:port`: adds a backend
    /// - `POST /backends/<slot>/drain[?deadline=<seconds>]`, `.../undrain`, `.../remove`
    ///   (also `DELETE /backends/<slot>`), `.../restart`
    pub fn admin(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().trim_end_matches('/');
        let query = req.uri().query().unwrap_or("");
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        let result: Result<serde_json::Value, (StatusCode, String)> =
            match (&method, segments.as_slice()) {
                (&Method::GET, ["metrics"]) => {
                    if param("format").as_deref() == Some("text") {
                        let mut body = metrics_text(&self.metrics());
                        if let Some(store) = &self.store {
                            body.push_str(&store_text(&store.metrics()));
                        }
                        return text(StatusCode::OK, body);
                    }
                    Ok(metrics_json(&self.metrics(), self))
                }
                (&Method::GET, ["backends"]) => Ok(backends_json(&self.router.backends(), self)),
                (&Method::POST, ["backends"]) => match param("url") {
                    Some(url) => self
                        .add_named(&param("name").unwrap_or_else(|| url.clone()), &url)
                        .map(id_json)
                        .map_err(|e| (StatusCode::BAD_REQUEST, e)),
                    None => Err((StatusCode::BAD_REQUEST, "missing ?url=".into())),
                },
                (_, ["backends", slot, rest @ ..]) => {
                    let Ok(slot) = slot.parse::<u16>() else {
                        return text(StatusCode::BAD_REQUEST, format!("bad slot {slot:?}\n"));
                    };
                    let not_found = |e: String| (StatusCode::NOT_FOUND, e);
                    match (&method, rest) {
                        (&Method::POST, ["drain"]) => {
                            let deadline = match param("deadline").map(|s| s.parse::<f64>()) {
                                None => None,
                                Some(Ok(s)) if s >= 0.0 && s.is_finite() => {
                                    Some(Duration::from_secs_f64(s))
                                }
                                Some(_) => {
                                    return text(StatusCode::BAD_REQUEST, "bad deadline\n".into());
                                }
                            };
                            self.drain(slot, deadline).map(id_json).map_err(not_found)
                        }
                        (&Method::POST, ["undrain"]) => {
                            self.undrain(slot).map(id_json).map_err(not_found)
                        }
                        (&Method::POST, ["remove"]) | (&Method::DELETE, []) => self
                            .remove(slot)
                            .map(|purged| serde_json::json!({ "purged": purged }))
                            .map_err(not_found),
                        (&Method::POST, ["restart"]) => {
                            self.restart(slot).map(id_json).map_err(not_found)
                        }
                        _ => Err((StatusCode::NOT_FOUND, "no such admin action".into())),
                    }
                }
                _ => Err((StatusCode::NOT_FOUND, "no such admin resource".into())),
            };
        match result {
            Ok(value) => json(StatusCode::OK, &value),
            Err((status, message)) => json(status, &serde_json::json!({ "error": message })),
        }
    }
}

fn id_json(id: BackendId) -> serde_json::Value {
    serde_json::json!({ "slot": id.slot(), "generation": id.generation(), "id": id.to_string() })
}

fn backends_json(backends: &[BackendInfo], proxy: &Proxy) -> serde_json::Value {
    backends
        .iter()
        .map(|b| {
            serde_json::json!({
                "slot": b.id.slot(),
                "generation": b.id.generation(),
                "id": b.id.to_string(),
                "url": &*b.label,
                "live": proxy.url_of(b.id).is_some(),
                "ready": b.ready(),
                "healthy": b.healthy,
                "draining": b.draining,
                "revoked": b.revoked,
                "sessions": b.sessions,
            })
        })
        .collect()
}

/// The metrics as a JSON object.
pub fn metrics_json(m: &Metrics, proxy: &Proxy) -> serde_json::Value {
    let rejected: serde_json::Map<String, serde_json::Value> = m
        .rejected
        .iter()
        .map(|(name, n)| ((*name).to_string(), (*n).into()))
        .collect();
    serde_json::json!({
        "pinned": m.pinned,
        "placed": m.placed,
        "rejected": rejected,
        "rejected_total": m.rejected_total(),
        "keys_learned": m.keys_learned,
        "keys_forgotten": m.keys_forgotten,
        "keys_expired": m.keys_expired,
        "keys_revoked": m.keys_revoked,
        "keys_purged": m.keys_purged,
        "keys_evicted": m.keys_evicted,
        "keys_released": m.keys_released,
        "key_conflicts": m.key_conflicts,
        "id_mismatches": m.id_mismatches,
        "keys_unlearned": m.keys_unlearned,
        "bodies_observed": m.bodies_observed,
        "observe_limit_hits": m.observe_limit_hits,
        "vetoes": m.vetoes,
        "table": { "len": m.table.len, "capacity": m.table.capacity },
        "backends": backends_json(&m.backends, proxy),
        "store": proxy.store().map(|store| store_json(m, &store.metrics())),
    })
}

/// The shared store's side of the metrics: the router's and the adapter's.
fn store_json(m: &Metrics, s: &StoreMetrics) -> serde_json::Value {
    let ms = |q: f64| {
        s.lookup_latency
            .quantile(q)
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    serde_json::json!({
        "circuit": format!("{:?}", s.circuit),
        "circuit_opened": s.circuit_opened,
        "lookups": s.lookups,
        "found": s.found,
        "missing": s.missing,
        "unavailable": s.unavailable,
        "lookup_p50_ms": ms(0.5),
        "lookup_p99_ms": ms(0.99),
        "errors": {
            "timeouts": s.errors.timeouts,
            "connection": s.errors.connection,
            "server": s.errors.server,
            "other": s.errors.other,
        },
        "writes": s.writes,
        "binds_taken": s.binds_taken,
        "reseeds": s.reseeds,
        "store_restarts": s.store_restarts,
        "queue_depth": m.store_queue,
        "pending_writes": s.pending_writes,
        "writes_dropped": m.store_writes_dropped,
        "adopted": m.store_adopted,
    })
}

/// The shared store's metrics as `name value` lines.
fn store_text(s: &StoreMetrics) -> String {
    let mut out = String::new();
    let circuit = format!("{:?}", s.circuit).to_lowercase();
    let _ = writeln!(out, "mcp_affinity_store_circuit{{state=\"{circuit}\"}} 1");
    for (name, value) in [
        ("store_lookups", s.lookups),
        ("store_found", s.found),
        ("store_missing", s.missing),
        ("store_unavailable", s.unavailable),
        ("store_circuit_opened", s.circuit_opened),
        ("store_writes", s.writes),
        ("store_binds_taken", s.binds_taken),
        ("store_reseeds", s.reseeds),
        ("store_pending_writes", s.pending_writes as u64),
    ] {
        let _ = writeln!(out, "mcp_affinity_{name} {value}");
    }
    for (kind, n) in [
        ("timeout", s.errors.timeouts),
        ("connection", s.errors.connection),
        ("server", s.errors.server),
        ("other", s.errors.other),
    ] {
        let _ = writeln!(out, "mcp_affinity_store_errors{{kind=\"{kind}\"}} {n}");
    }
    out
}

/// The metrics as `name value` lines.
pub fn metrics_text(m: &Metrics) -> String {
    let mut out = String::new();
    for (name, value) in [
        ("pinned", m.pinned),
        ("placed", m.placed),
        ("keys_learned", m.keys_learned),
        ("keys_forgotten", m.keys_forgotten),
        ("keys_expired", m.keys_expired),
        ("keys_revoked", m.keys_revoked),
        ("keys_purged", m.keys_purged),
        ("keys_evicted", m.keys_evicted),
        ("keys_released", m.keys_released),
        ("key_conflicts", m.key_conflicts),
        ("id_mismatches", m.id_mismatches),
        ("keys_unlearned", m.keys_unlearned),
        ("bodies_observed", m.bodies_observed),
        ("observe_limit_hits", m.observe_limit_hits),
        ("vetoes", m.vetoes),
        ("table_len", m.table.len as u64),
        ("store_queue", m.store_queue as u64),
        ("store_writes_dropped", m.store_writes_dropped),
    ] {
        let _ = writeln!(out, "mcp_affinity_{name} {value}");
    }
    for (reason, n) in &m.rejected {
        let _ = writeln!(out, "mcp_affinity_rejected{{reason=\"{reason}\"}} {n}");
    }
    for b in &m.backends {
        let _ = writeln!(
            out,
            "mcp_affinity_backend_sessions{{id=\"{}\",url=\"{}\",ready=\"{}\",draining=\"{}\"}} {}",
            b.id,
            b.label,
            b.ready(),
            b.draining,
            b.sessions
        );
    }
    out
}

/// Why a request that failed never reached its backend, if it surely did not: hyper-util
/// reports connection failures (nothing written) as connect errors.
fn undelivered(error: &hyper_util::client::legacy::Error) -> Option<Undelivered> {
    if !error.is_connect() {
        return None;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(if refused(io) {
                Undelivered::Refused
            } else if io.kind() == std::io::ErrorKind::TimedOut {
                Undelivered::TimedOut
            } else {
                Undelivered::Failed
            });
        }
        source = e.source();
    }
    Some(Undelivered::Failed)
}

/// Whether a failed request failed on the client's side (its body), not the backend's.
fn client_failed(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            return hyper.is_user();
        }
        source = e.source();
    }
    false
}

/// Whether the exchange is pinned by a protocol key (a session or a task): never placed again.
fn protocol_key(exchange: &Exchange) -> bool {
    exchange
        .key()
        .is_some_and(|(kind, _)| kind != KeyKind::Operator)
}

/// Nothing listens at the address: refused, or the host or network is unreachable.
fn refused(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, HostUnreachable, NetworkUnreachable};
    matches!(
        error.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable
    )
}

/// The most bytes of a placed request's body kept to send it again after a failed delivery.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// A request body for one or more delivery attempts.
enum ReplayBody {
    /// Kept whole (small, and placed): every attempt sends it again.
    Kept(Bytes),
    /// Streamed as it comes: one attempt only.
    Streamed(Option<Incoming>),
}

impl ReplayBody {
    /// Keeps `body` if it is known to be small enough; streams it otherwise.
    async fn keep(body: Incoming) -> ReplayBody {
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= REPLAY_LIMIT);
        if !small {
            return ReplayBody::Streamed(Some(body));
        }
        match body.collect().await {
            Ok(collected) => ReplayBody::Kept(collected.to_bytes()),
            // The client's body failed: the one attempt sends nothing more.
            Err(_) => ReplayBody::Kept(Bytes::new()),
        }
    }

    /// The body of the next attempt, or `None` if it was streamed already.
    fn attempt(&mut self) -> Option<OutBody> {
        match self {
            ReplayBody::Kept(bytes) => Some(Either::Left(Full::new(bytes.clone()))),
            ReplayBody::Streamed(body) => body.take().map(Either::Right),
        }
    }
}

/// What the proxy sends a backend: a kept body or the client's own.
type OutBody = Either<Full<Bytes>, Incoming>;

/// A keyring from a key file (one key per line, 64 hex digits; `#` comments), and when the
/// file was modified. Errors name the line, never the key.
fn read_keys(path: &std::path::Path) -> Result<(Keyring, Option<std::time::SystemTime>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keyring = Keyring::from_lines(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((keyring, modified))
}

/// 12 unpredictable bytes for the nonce sequence, from the standard library's random hash
/// keys (no crate needed for so little).
fn seed() -> [u8; 12] {
    use std::hash::{BuildHasher, Hasher};
    let word = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let mut seed = [0; 12];
    seed[..8].copy_from_slice(&word().to_le_bytes());
    seed[8..].copy_from_slice(&word().to_le_bytes()[..4]);
    seed
}

/// Ends the exchange as aborted if it was not handed on.
struct ExchangeGuard<'a> {
    router: &'a Router,
    exchange: Option<Exchange>,
}

impl ExchangeGuard<'_> {
    fn exchange(&self) -> &Exchange {
        self.exchange
            .as_ref()
            .expect("exchange present until taken")
    }

    fn take(&mut self) -> Exchange {
        self.exchange.take().expect("exchange taken once")
    }
}

impl Drop for ExchangeGuard<'_> {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            self.router
                .on_exchange_end(exchange, End::Aborted, Instant::now());
        }
    }
}

/// A response body that ends (cleanly, so the client reconnects) when its backend is removed,
/// dropping the inner body and with it the backend connection.
struct UntilGone<B> {
    inner: Option<Pin<Box<B>>>,
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<B> UntilGone<B> {
    fn new(inner: B, mut gone: watch::Receiver<bool>) -> Self {
        UntilGone {
            inner: Some(Box::pin(inner)),
            gone: Box::pin(async move {
                // Resolves on `true`, or never if the switch is dropped without flipping.
                if gone.wait_for(|g| *g).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for UntilGone<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = inner.as_mut().poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.gone.as_mut().poll(cx).is_ready() {
            this.inner = None;
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Accepts connections until `shutdown`, serving each with `handler`; then waits up to `grace`
/// for in-flight requests.
async fn serve_with<H, F>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    eprintln!("proxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let response = handler(req, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        // No timer, so no timeout: an SSE stream may stay idle for as long as both ends like.
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// The hop-by-hop headers (RFC 9110 §7.6.1), and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The router's rejection, as the response a client acts on.
pub fn rejection_response(rejection: &Rejection) -> Response<ProxyBody> {
    rejection.to_response().map(full)
}

/// 502 with a plain-text body. Not a JSON-RPC error: the proxy has not read the request's
/// id, and a JSON-RPC error with `"id": null` leaves clients that parse error bodies (rmcp)
/// waiting for an answer to their request forever.
fn bad_gateway(why: &str) -> Response<ProxyBody> {
    text(StatusCode::BAD_GATEWAY, format!("Bad gateway: {why}\n"))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(format!("{value:#}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A proxy running in this process (tests, the demo, the load generator).
pub struct Running {
    /// The proxy.
    pub proxy: Arc<Proxy>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin API listens.
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Starts `config`'s proxy, its admin API and its maintenance task, on 127.0.0.1 with
    /// OS-assigned ports.
    pub async fn start(config: &Config) -> Result<Running, String> {
        let proxy = Proxy::new(config)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let admin = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = futures_util::FutureExt::shared(async move {
            let _ = stopped.await;
        });
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(proxy.clone().serve(listener, stopped.clone()));
        tasks.spawn(proxy.clone().serve_admin(admin, stopped.clone()));
        tasks.spawn(proxy.clone().maintain(stopped));
        Ok(Running {
            proxy,
            addr,
            admin: admin_addr,
            stop: Some(stop),
            tasks,
        })
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Stops accepting, lets in-flight requests finish for the grace period, and waits.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        while self.tasks.join_next().await.is_some() {}
    }
}
