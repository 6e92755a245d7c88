//! A reverse proxy for MCP on hyper 1, tokio and hyper-util, driving
//! [`mcp_affinity::router::Router`]: the code shared by `examples/proxy.rs`, the demo, the load
//! generator and the end-to-end tests (each includes this file with `#[path]`).
//!
//! Per request, the router's [`AffinityLayer`] does the routing (rejections, failed
//! deliveries, the response head, the observed body) around the proxy's own forwarding
//! service, [`Forwarder`], which sends to the chosen backend through a pooled hyper-util
//! client, or, once a keep-alive client has sent two requests in a row to one backend,
//! through a backend connection of that client connection's own, driven in its task
//! (`dedicated.rs`: no hand-off between tasks per request; bounded; requests it cannot take
//! go through the pool). Bodies are never collected (a small body of a request the router
//! may place again is kept for that); `text/event-stream` answers get `X-Accel-Buffering:
//! no`, and a `GET` stream (which has no end of its own) ends when its backend is removed or
//! restarted, while a `POST`'s answer runs to its end; there is no timeout on a response
//! stream; a client that goes away drops the backend's body at once.
//!
//! The binary serves its clients on threads of their own, each polling its own connections
//! ([`Proxy::serve_on_threads`]); in-process users (the demo, the load generator, most tests)
//! serve them on the runtime they run on ([`Proxy::serve`]).
//!
//! Out of band: an admin listener (metrics, add/drain/undrain/remove/restart backends:
//! `admin.rs`), a maintenance task (`Router::maintain` every second, TCP health checks),
//! graceful shutdown (the serving loop and how threads share connections: `accept.rs`).
//!
//! A fleet of proxies agrees on owners in two ways, alone or together:
//!
//! - **sealing** (`seal_key_file`): the two session eras (Streamable HTTP `Mcp-Session-Id`,
//!   legacy SSE `sessionId`) carry their owner in a sealed token; no shared state;
//! - **a shared Redis** (`redis`, through `mcp-affinity-redis`): 2026-07-28 task ids and
//!   operator keys always, and the sessions too when they are not sealed. A key this proxy
//!   does not know is looked up there (503 + `Retry-After` while Redis does not answer); what
//!   it learns is written there by a background task.

// The proxy owns the clock (it hands `Instant::now()` to the sans-IO router), its threads and
// its sockets.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
// Each includer uses part of this module.
#![allow(dead_code)]

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
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mcp_affinity::router::{
    Metrics, NewBackend, Probe, Rejection, Router, Sealing, SharedStore, Undelivered,
};
use mcp_affinity::seal::Keyring;
use mcp_affinity::table::{MemoryTable, MemoryTableConfig};
use mcp_affinity::tower::{
    Affinity, AffinityBody, AffinityLayer, ReplayBody, StoreAnswer, Upstream,
};
use mcp_affinity::{BackendId, TenantId};
use mcp_affinity_redis::{Answer, RedisStore, RedisStoreConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

#[path = "accept.rs"]
mod accept;
#[path = "admin.rs"]
mod admin;
#[path = "dedicated.rs"]
pub mod dedicated;
#[path = "hop.rs"]
mod hop;
#[path = "probe.rs"]
mod probe;
#[path = "timed.rs"]
pub mod timed;
use accept::{Acceptor, Share, serve_with};
use dedicated::{Dedicated, Limits, LookAhead};
use hop::check_target;
pub use hop::strip_hop_by_hop;
use hop::{other_transfer_coding, strip_response_head};
use timed::{BodyTimer, Ticket};

/// A client's request body, as the proxy passes it on.
type RequestBody = timed::Timed<Incoming>;

/// The body of every response the proxy sends: the gateway's (the backend's, observed by the
/// router, or the router's rejection), the backend's as it came ([`Config::bypass_router`]),
/// or one the proxy writes itself. Variants, not a boxed body: no allocation per response.
pub type ProxyBody = Either<Either<GatewayBody, ForwardBody>, Full<Bytes>>;

/// The body of the gateway's answers.
type GatewayBody = AffinityBody<ForwardBody, fn() -> Instant, MemoryTable>;

/// The most a connection of the proxy buffers each way (hyper's `max_buf_size`), client or
/// backend: what an answer waits in when its client reads slower than its backend writes, and
/// about the largest head the proxy reads (hyper checks it between reads, so a head that ends
/// in the read that crosses it passes; one well past it is answered 431).
///
/// hyper's default is about 400 KiB. Measured on 2 cores, 2026-12-01 (`scripts/slow-readers.py`:
/// 200 clients that never read an endless event stream; one 1 GB event stream through the
/// proxy to curl, three rounds), against that default:
///
/// | limit | memory per slow reader | one stream's throughput |
/// |---|---|---|
/// | hyper's default | 550 to 600 KiB | 1.35 to 1.56 GB/s |
/// | 64 KiB | 178 to 186 KiB | 1.07 to 1.19 GB/s |
/// | 16 KiB (HAProxy's `tune.bufsize`) | 76 KiB | 0.77 to 0.83 GB/s |
///
/// MCP messages are small (the hop benchmark's calls never fill 8 KiB), so the limit costs
/// only streams of many megabytes; 64 KiB keeps most of their throughput and a third of the
/// memory a slow reader pins.
pub const BUFFER_LIMIT: usize = 64 * 1024;

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
    /// The most backend connections dedicated to one client connection each, open at once
    /// (0: none; every request goes through the pool). See `examples/common/dedicated.rs`.
    pub dedicated_connections: usize,
    /// Send the backend's authority as `Host` instead of the client's.
    pub rewrite_host: bool,
    /// TCP health checks of every backend at this interval (`None`: off).
    pub health_interval: Option<Duration>,
    /// On shutdown, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// How long a client connection may take to send a request's head, counted from when the
    /// proxy is ready to read it: from the connection's start, then from the end of each
    /// response (so a keep-alive connection idle this long between requests is closed, as
    /// HAProxy's `timeout client` closes it). A response that streams (SSE) is never cut by
    /// it. `None`: no bound, and a client that sends nothing, or one byte at a time, holds
    /// its connection (and a file descriptor) for as long as it likes.
    pub header_timeout: Option<Duration>,
    /// How long a request's body may take to arrive once the proxy waits for it, plus a
    /// millisecond for each byte of it (`timed.rs`: an upload at 1,000 bytes a second or
    /// faster, on average, is never cut; the clock also runs while a backend that reads the
    /// body slower than that holds it back). A body that takes longer fails: the client is
    /// answered 408 and its connection closed, and the backend connection the body was
    /// streamed to is closed. `None`: no bound, and a client that sends its body a byte at a
    /// time holds its connection for as long as it likes.
    pub body_timeout: Option<Duration>,
    /// The most client connections served at once (`None`: no bound); past it, new ones wait
    /// in the listening socket's backlog until one closes. `examples/proxy.rs` sets it below
    /// its open-file limit, so that backend connections, health checks and the admin API
    /// always have descriptors left.
    pub max_connections: Option<usize>,
    /// How long a backend may take to answer a request's head, counted from when the request
    /// is handed to the connection, so a request body's upload counts in it (`None`: as long
    /// as it likes). A backend that takes longer is answered for with 504; its
    /// connection is closed, so a late answer reaches nobody. The body, an event stream
    /// included, is not timed. A tool that works for minutes before answering JSON needs a
    /// bound longer than that.
    pub response_timeout: Option<Duration>,
    /// A Redis the proxies of a fleet share (`redis://host:port[/db]`): keys this proxy does
    /// not know are looked up there, and what it learns is written there. Connected lazily:
    /// the proxy starts (and routes what it knows) while Redis is down.
    pub redis: Option<String>,
    /// The prefix of every key the fleet keeps in Redis (the same on every proxy).
    pub redis_prefix: String,
    /// In a fleet, how long a session of a backend down here, which the proxy cannot place on
    /// either side of the loss, gets 503 before its 404 (`None`: while the backend is down;
    /// see `RouterBuilder::down_grace`).
    pub down_grace: Option<Duration>,
    /// Send every request to the first backend, without the router: no routing, no
    /// affinity, no rejections; the rest of the proxy as it is. Only for measuring what the
    /// router costs a hop (`scripts/hop-bench.sh`, the `bypass` hop).
    pub bypass_router: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backends: Vec::new(),
            sse_path: Some("/sse".into()),
            message_path: "/messages".into(),
            idle_ttl: Some(Duration::from_secs(3600)),
            pool_idle_timeout: Duration::from_secs(4),
            dedicated_connections: 1024,
            rewrite_host: false,
            seal_key_file: None,
            health_interval: Some(Duration::from_secs(1)),
            shutdown_grace: Duration::from_secs(2),
            header_timeout: Some(Duration::from_secs(30)),
            body_timeout: Some(Duration::from_secs(30)),
            max_connections: None,
            response_timeout: None,
            redis: None,
            redis_prefix: "mcpa".into(),
            down_grace: None,
            bypass_router: false,
        }
    }
}

/// One backend as the proxy knows it: where to send, and a switch that ends its open streams
/// when it is removed.
struct Backend {
    id: BackendId,
    url: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    /// `authority` as a `Host` header value.
    host: HeaderValue,
    /// A path prefix (no trailing slash; empty for none).
    prefix: String,
    /// Flipped to `true` when the backend is removed or restarted.
    gone: watch::Sender<bool>,
}

/// The proxy: a [`Router`], and its layer around the forwarder.
pub struct Proxy {
    router: Arc<Router>,
    backends: Arc<Backends>,
    /// Makes each client connection's gateway.
    layer: AffinityLayer<MemoryTable, fn() -> Instant, Classifier>,
    /// Requests go to the forwarder without the layer ([`Config::bypass_router`]).
    bypass_router: bool,
    health_interval: Option<Duration>,
    shutdown_grace: Duration,
    header_timeout: Option<Duration>,
    body_timeout: Option<Duration>,
    max_connections: usize,
    /// 502 answers sent (the backend failed and the router could not decide for it).
    bad_gateways: std::sync::atomic::AtomicU64,
    /// Of those, the ones a backend failed, by backend.
    bad_gateways_by: std::sync::Mutex<std::collections::HashMap<BackendId, u64>>,
    /// 5xx answers sent, whoever made them.
    server_errors: std::sync::atomic::AtomicU64,
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

/// The proxy's data plane: the router's layer around the forwarder.
type Gateway = Affinity<Forwarder, MemoryTable, fn() -> Instant, Classifier>;

/// Which forwarding errors mean "not delivered".
type Classifier = fn(&ForwardError) -> Option<Undelivered>;

/// A pooled client to send to the backends (behind an `Arc`: a `Client` is large, and its
/// handle travels with each request that may need it).
type Pool = Arc<Client<HttpConnector, ReplayBody<RequestBody>>>;

/// The backends' addresses by slot, and how to reach them.
struct Backends {
    by_slot: RwLock<Vec<Option<Backend>>>,
    /// How long the pools keep an idle backend connection.
    pool_idle_timeout: Duration,
    /// How long a backend may take to answer a request's head.
    response_timeout: Option<Duration>,
    /// The bounds of the dedicated backend connections.
    dedicated: Arc<Limits>,
    rewrite_host: bool,
    /// Requests come without the layer, so without an [`Upstream`]: they go to the first
    /// backend ([`Config::bypass_router`]).
    bypass_router: bool,
}

impl Proxy {
    /// A proxy with `config`'s router settings and backends.
    pub fn new(config: &Config) -> Result<Arc<Proxy>, String> {
        let table = MemoryTableConfig::new().with_idle_ttl(config.idle_ttl);
        let mut builder = Router::builder()
            .table_config(table)
            .sse_path(config.sse_path.as_deref())
            .message_paths(message_paths(&config.message_path));
        if let Some(grace) = config.down_grace {
            builder = builder.down_grace(grace);
        }
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
        let router = Arc::new(builder.build());
        let backends = Arc::new(Backends {
            by_slot: RwLock::new(Vec::new()),
            pool_idle_timeout: config.pool_idle_timeout,
            response_timeout: config.response_timeout,
            dedicated: Arc::new(Limits::new(
                config.dedicated_connections,
                config.pool_idle_timeout,
            )),
            rewrite_host: config.rewrite_host,
            bypass_router: config.bypass_router,
        });
        let probed = backends.clone();
        let mut layer = AffinityLayer::new(router.clone(), Instant::now as fn() -> Instant)
            .undelivered(ForwardError::undelivered as Classifier)
            .refusal_check(move |upstream: &Upstream| {
                let (backends, id) = (probed.clone(), upstream.backend());
                async move { backends.refuses(id).await }
            });
        if let Some(store) = &store {
            // Keys the table does not know are read from Redis; keys a response reveals are
            // written to it before the client sees them.
            let (reader, writer, router) = (store.clone(), store.clone(), router.clone());
            layer = layer
                .store_lookup(move |key: String| {
                    let store = reader.clone();
                    async move {
                        match store.lookup(&key).await {
                            Answer::Found(value) => StoreAnswer::Found(value),
                            Answer::Missing => StoreAnswer::Missing,
                            _ => StoreAnswer::Unavailable,
                        }
                    }
                })
                .store_sync(move || {
                    let (store, router) = (writer.clone(), router.clone());
                    async move { store.write_through(&router).await }
                });
        }
        let proxy = Arc::new(Proxy {
            router,
            backends,
            layer,
            bypass_router: config.bypass_router,
            health_interval: config.health_interval,
            shutdown_grace: config.shutdown_grace,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            max_connections: config.max_connections.unwrap_or(usize::MAX),
            bad_gateways: Default::default(),
            bad_gateways_by: Default::default(),
            server_errors: Default::default(),
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
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("backend {url:?}: {e}"))?;
        let mut upstreams = self.backends.by_slot.write().unwrap();
        let id = self
            .router
            .add(NewBackend::new(TenantId::DEFAULT, url).name(name))
            .map_err(|e| e.to_string())?;
        let slot = usize::from(id.slot());
        if upstreams.len() <= slot {
            upstreams.resize_with(slot + 1, || None);
        }
        upstreams[slot] = Some(Backend {
            id,
            url: url.into(),
            scheme,
            authority,
            host,
            prefix,
            gone: watch::Sender::new(false),
        });
        Ok(id)
    }

    /// The current id of a backend slot.
    pub fn backend_id(&self, slot: u16) -> Option<BackendId> {
        let upstreams = self.backends.by_slot.read().unwrap();
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
    /// them after its removal grace, and the proxy ends the `GET` streams still open to it
    /// (answers to `POST`s in flight run to their end). Returns the number of keys the backend
    /// owned.
    pub fn remove(&self, slot: u16) -> Result<usize, String> {
        let mut upstreams = self.backends.by_slot.write().unwrap();
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
        let mut upstreams = self.backends.by_slot.write().unwrap();
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

    /// How many backend connections dedicated to a client connection are open (or opening).
    pub fn dedicated_connections(&self) -> usize {
        self.backends.dedicated.open()
    }

    /// The backend's base URL by id (current generation only).
    pub fn url_of(&self, id: BackendId) -> Option<Arc<str>> {
        let upstreams = self.backends.by_slot.read().unwrap();
        let upstream = upstreams.get(usize::from(id.slot()))?.as_ref()?;
        (upstream.id == id).then(|| upstream.url.clone())
    }

    /// A new client connection from `peer`: its share of the proxy, and the future that
    /// drives its dedicated backend connection (`examples/common/dedicated.rs`), to be polled
    /// along with the client connection, in its task, for as long as it lives (it never
    /// ends by itself).
    pub fn connection(
        self: &Arc<Self>,
        peer: SocketAddr,
        pool: &Pool,
    ) -> (Connection, impl Future<Output = ()> + Send + use<>) {
        let limits = &self.backends.dedicated;
        let dedicated = limits
            .enabled()
            .then(|| Arc::new(Dedicated::new(limits.clone())));
        let forwarder = Forwarder {
            backends: self.backends.clone(),
            pool: pool.clone(),
            dedicated: dedicated.clone(),
        };
        let connection = Connection {
            proxy: self.clone(),
            gate: match self.bypass_router {
                false => Gate::Routed(self.layer.layer(forwarder)),
                true => Gate::Bypass(forwarder),
            },
            forwarded_for: forwarded_for(peer),
            body_timer: self.body_timeout.map(BodyTimer::new),
        };
        let drive = async move {
            match dedicated {
                Some(dedicated) => dedicated.drive().await,
                None => std::future::pending().await,
            }
        };
        (connection, drive)
    }

    /// How many requests were answered 502.
    pub fn bad_gateways(&self) -> u64 {
        self.bad_gateways.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many requests were answered with a 5xx status, whoever made the answer: the
    /// router (503 rejections), the layer, this proxy (502, "busy"), or a backend.
    pub fn server_errors(&self) -> u64 {
        self.server_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many requests were answered 502 because backend `id` failed them after they may
    /// have run.
    pub fn bad_gateways_of(&self, id: BackendId) -> u64 {
        let by = self.bad_gateways_by.lock().unwrap();
        by.get(&id).copied().unwrap_or(0)
    }

    /// The answer to the client for what the gateway made of its request.
    fn answer<B>(
        &self,
        made: Result<Response<B>, ForwardError>,
        body: fn(B) -> Either<GatewayBody, ForwardBody>,
    ) -> Response<ProxyBody> {
        match made {
            Ok(response) => response.map(|b| Either::Left(body(b))),
            Err(error) => self.failed(error),
        }
    }

    /// The answer to the client for a request the forwarder could not answer.
    fn failed(&self, error: ForwardError) -> Response<ProxyBody> {
        match error {
            // The client's own body failed (it went away mid-request): nobody to tell.
            ForwardError::ClientBody => {
                text(StatusCode::BAD_REQUEST, "request body failed\n".into())
            }
            error @ ForwardError::Local(_) => {
                eprintln!("proxy: 503: {error}");
                busy()
            }
            error @ ForwardError::TimedOut(..) => {
                eprintln!("proxy: 504: {error}");
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("Gateway timeout: {error}\n"),
                )
            }
            error => self.bad_gateway(&error),
        }
    }

    fn bad_gateway(&self, error: &ForwardError) -> Response<ProxyBody> {
        self.bad_gateways
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let ForwardError::Failed(backend, _) = error {
            *self
                .bad_gateways_by
                .lock()
                .unwrap()
                .entry(*backend)
                .or_default() += 1;
        }
        let why = error.to_string();
        eprintln!("proxy: 502: {why}");
        bad_gateway(&why)
    }

    /// Accepts connections on `listener` until `shutdown` completes, then stops accepting and
    /// gives in-flight requests the grace period. Its connections share a pool of backend
    /// connections of their own.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let limit = self.max_connections;
        self.serve_from(Acceptor::alone(listener, limit), shutdown)
            .await;
    }

    /// [`serve`](Proxy::serve), with the connections `acceptor` accepts.
    async fn serve_from(self: Arc<Self>, acceptor: Acceptor, shutdown: impl Future<Output = ()>) {
        let (grace, header_timeout) = (self.shutdown_grace, self.header_timeout);
        let pool = self.backends.pool();
        let proxy = self;
        serve_with(acceptor, shutdown, grace, header_timeout, move |peer| {
            let (connection, drive) = proxy.connection(peer, &pool);
            (move |req| connection.handle(req), drive)
        })
        .await;
    }

    /// Serves `listener` as [`serve`](Proxy::serve) does, on `threads` threads of their own,
    /// each with a single-threaded runtime that accepts from the same listening socket and
    /// keeps each connection it accepts, with its dedicated backend connection, for good;
    /// each has its own pool of backend connections.
    /// `shutdown` makes each stop accepting and drain; the future returned completes once
    /// every thread has stopped.
    ///
    /// Why (issue #13): on tokio's shared work-stealing runtime, a worker that finds work
    /// wakes a sleeping one to share it, and a connection's wake-ups often come from the I/O
    /// driver on another worker: about 0.7 `futex` calls a request at 8,000 calls/s, none on
    /// these threads. Each thread polls its own sockets, as HAProxy's and nginx's do. Every
    /// thread is woken by a new connection and the first to accept it keeps it, so a busy
    /// thread takes fewer (on 2 cores under `scripts/hop-bench.sh`, the two threads' CPU
    /// times came within 15% of each other).
    ///
    /// Fails before any thread starts if the socket cannot be shared or a runtime not built;
    /// if a thread cannot be started, those started run until `shutdown`.
    pub fn serve_on_threads<S>(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        threads: std::num::NonZeroUsize,
        shutdown: impl Fn() -> S,
    ) -> std::io::Result<impl Future<Output = ()> + Send>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true)?;
        let mut started = Vec::with_capacity(threads.get());
        let mut shares = Share::for_threads(threads.get()).into_iter();
        for share in shares.by_ref() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            started.push((runtime, listener.try_clone()?, share));
        }
        let mut stopped = Vec::with_capacity(threads.get());
        // Each thread's part of the bound (connections are shared evenly between them; at
        // least one each, so a bound below the threads serves one a thread).
        let limit = (self.max_connections / threads.get()).max(1);
        // What the threads share and one of them opened (a connection to the shared store) is
        // driven by that thread's runtime: so a thread that has stopped serving keeps its
        // runtime running until every thread has (each holds a sender until then; the
        // receiver hears when none is left).
        let (serving, _) = tokio::sync::watch::channel(());
        for (i, (runtime, listener, share)) in started.into_iter().enumerate() {
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            let (proxy, shutdown) = (self.clone(), shutdown());
            let (serving, mut all_stopped) = (serving.clone(), serving.subscribe());
            let serve = move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let acceptor = Acceptor {
                                listener,
                                share: Some(share),
                                limit,
                            };
                            proxy.serve_from(acceptor, shutdown).await;
                        }
                        Err(e) => {
                            // Handing it a connection now fails: the thread that accepted
                            // the connection serves it.
                            drop(share);
                            eprintln!("proxy: thread {i}: {e}");
                        }
                    }
                    drop(serving);
                    // Nothing is sent: this returns once every sender is dropped.
                    let _ = all_stopped.changed().await;
                });
                drop(done);
            };
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(serve)?;
            stopped.push(finished);
        }
        Ok(async move {
            for finished in stopped {
                // Dropped when the thread stops, whether it ended or panicked.
                let _ = finished.await;
            }
        })
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
            let upstreams = self.backends.by_slot.read().unwrap();
            upstreams.iter().flatten().map(|u| u.id).collect()
        };
        let checks = targets.into_iter().filter_map(|id| {
            let addr = self.backends.address_of(id)?;
            Some(async move {
                let connect = TcpStream::connect(addr);
                let probe = match tokio::time::timeout(Duration::from_millis(500), connect).await {
                    Ok(Ok(_)) => Probe::Up,
                    Ok(Err(e)) if refused(&e) => Probe::Refused,
                    // Out of descriptors, buffers or local ports here: says nothing of the
                    // backend, so nothing is reported.
                    Ok(Err(e)) if local_shortage(&e) => return None,
                    _ => Probe::Failed,
                };
                Some((id, probe))
            })
        });
        let mut set = tokio::task::JoinSet::new();
        for check in checks {
            set.spawn(check);
        }
        while let Some(Ok(checked)) = set.join_next().await {
            if let Some((id, probe)) = checked {
                let _ = self.router.report_health(id, probe, Instant::now());
            }
        }
    }
}

/// One client connection's share of the proxy ([`Proxy::connection`]): its gateway, whose
/// forwarder has the connection's dedicated backend connection, and its client's address.
pub struct Connection {
    proxy: Arc<Proxy>,
    gate: Gate,
    /// The client's address as an `X-Forwarded-For` value.
    forwarded_for: Option<HeaderValue>,
    /// The bound on its request bodies (`None`: none).
    body_timer: Option<BodyTimer>,
}

impl Connection {
    /// Proxies one request through the router's layer: a request the forwarder could not
    /// deliver is reported to the router, which places it again on another backend (a
    /// conversation start, a stateless call: its body, if small, was kept for that) or
    /// rejects it (a pinned request whose owner refused the connection: its session is gone,
    /// 404). The client's address is appended to `X-Forwarded-For`.
    ///
    /// A request whose body does not arrive in time ([`Config::body_timeout`]) is answered 408
    /// and its connection closed.
    ///
    /// The request is handed to the gateway before this returns; the future only waits for
    /// the answer. It stays small that way (hyper moves it into its connection state).
    pub fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        let (parts, body) = req.into_parts();
        let (body, ticket) = timed::time(self.body_timer.as_ref(), body);
        let mut req = Request::from_parts(parts, body);
        // The request as it came (as the axum gateway checks it), then the headers that are
        // this hop's removed, before the router reads it and before the client's address is
        // added (a client could name X-Forwarded-For in `Connection` and have it removed).
        let checked = check_target(&mut req);
        strip_hop_by_hop(req.headers_mut());
        if let Some(ip) = &self.forwarded_for {
            req.headers_mut()
                .append(HeaderName::from_static("x-forwarded-for"), ip.clone());
        }
        // The forwarder takes every request (a pooled client, or the dedicated connection), so
        // the gateway is ready at once.
        let call = match (checked, &self.gate) {
            (Err((status, why)), _) => Err(Unsent::Refused(status, why)),
            (Ok(()), Gate::Routed(gateway)) => {
                let mut gateway = gateway.clone();
                match gateway.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
                    Poll::Ready(Ok(())) => Ok(Call::Routed(gateway.call(req))),
                    Poll::Ready(Err(error)) => Err(Unsent::Failed(error)),
                    // Never with this forwarder; a gateway that could be busy would shed it.
                    Poll::Pending => Err(Unsent::Busy),
                }
            }
            (Ok(()), Gate::Bypass(forwarder)) => Ok(Call::Bypass(
                forwarder.clone().call(req.map(ReplayBody::streamed)),
            )),
        };
        let proxy = self.proxy.clone();
        async move {
            let response = match call {
                Ok(Call::Routed(call)) => proxy.answer(call.await, Either::Left),
                Ok(Call::Bypass(call)) => proxy.answer(call.await, Either::Right),
                Err(Unsent::Failed(error)) => proxy.failed(error),
                Err(Unsent::Refused(status, why)) => text(status, why.into()),
                Err(Unsent::Busy) => busy(),
            };
            // Whoever noticed that the body failed (the layer, or the forwarder) answered 400.
            if let Some(limit) = ticket.as_ref().and_then(Ticket::missed) {
                return body_timed_out(limit);
            }
            if response.status().is_server_error() {
                proxy
                    .server_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            response
        }
    }
}

/// What a connection hands its requests to.
enum Gate {
    /// The router's layer around the forwarder.
    Routed(Gateway),
    /// The forwarder alone ([`Config::bypass_router`]).
    Bypass(Forwarder),
}

/// A request handed to the [`Gate`].
enum Call<R, B> {
    Routed(R),
    Bypass(B),
}

/// Why a request was not handed to the gateway.
enum Unsent {
    /// The proxy answers it itself ([`check_target`]).
    Refused(StatusCode, &'static str),
    Failed(ForwardError),
    Busy,
}

/// The client's address as an `X-Forwarded-For` value.
pub fn forwarded_for(peer: SocketAddr) -> Option<HeaderValue> {
    HeaderValue::from_str(&peer.ip().to_string()).ok()
}

/// Why the forwarder could not answer.
#[derive(Debug)]
pub enum ForwardError {
    /// Nothing of the request reached the backend (or it died with it, see
    /// [`Upstream::starts_conversation`]): the router decides what now.
    Undelivered(Undelivered, String),
    /// The client's request body failed on the way.
    ClientBody,
    /// The backend failed after the request may have run.
    Failed(BackendId, String),
    /// The backend did not answer within the response timeout (the request may be running).
    TimedOut(BackendId, Duration),
    /// No connection could be opened for want of something on this machine (descriptors,
    /// ports): 503, and the backend is not blamed.
    Local(String),
}

impl ForwardError {
    fn undelivered(&self) -> Option<Undelivered> {
        match self {
            ForwardError::Undelivered(why, _) => Some(*why),
            _ => None,
        }
    }
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Undelivered(why, detail) => {
                write!(f, "not delivered ({why:?}): {detail}")
            }
            ForwardError::ClientBody => f.write_str("request body failed"),
            ForwardError::Failed(_, detail) => f.write_str(detail),
            ForwardError::TimedOut(backend, limit) => {
                write!(f, "{backend} did not answer within {limit:?}")
            }
            ForwardError::Local(detail) => write!(f, "no connection could be opened: {detail}"),
        }
    }
}

/// The body the forwarder answers with: the backend's (looked ahead in, on a dedicated
/// connection), ended when the backend is removed if it is an event stream.
type ForwardBody = UntilGone<LookAhead<Incoming>>;

/// Sends each request to the backend its [`Upstream`] names: on the client connection's
/// dedicated backend connection if it leads there and is ready, through the pool otherwise.
#[derive(Clone)]
struct Forwarder {
    backends: Arc<Backends>,
    /// The pool of the thread (or runtime) the client connection is served on.
    pool: Pool,
    /// The client connection's dedicated backend connection (`None`: off).
    dedicated: Option<Arc<Dedicated>>,
}

impl Service<Request<ReplayBody<RequestBody>>> for Forwarder {
    type Response = Response<ForwardBody>;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ForwardBody>, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        // The pooled client takes every request the dedicated connection does not.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<RequestBody>>) -> Self::Future {
        // The request is made and handed to a connection here; the future only waits for the
        // answer, so it stays small (it is boxed and moved per request).
        match self
            .backends
            .send(request, &self.pool, self.dedicated.as_ref())
        {
            Ok(sent) => sent.answer(),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

/// Where a request goes: [`Backends::target`].
struct Target {
    /// The request URI on the backend.
    uri: Uri,
    /// The backend's authority, as a `Host` header.
    host: HeaderValue,
    /// Flips to `true` when the backend is removed or restarted.
    gone: Option<watch::Receiver<bool>>,
}

/// A request handed to a backend connection: [`Backends::send`].
struct Sent {
    sending: Sending,
    backend: BackendId,
    gone: Option<watch::Receiver<bool>>,
    response_timeout: Option<Duration>,
}

/// Where a request went.
enum Sending {
    Pooled(hyper_util::client::legacy::ResponseFuture),
    /// On the client connection's dedicated connection. If that connection gives the request
    /// back unsent (it closed a moment ago), it goes through the pool, to `absolute`.
    Dedicated {
        answer: dedicated::Answer,
        connection: Arc<Dedicated>,
        absolute: Uri,
        pool: Pool,
    },
}

impl Sent {
    /// The backend's answer, or why there is none, within the response timeout. (At the
    /// timeout the wait is dropped, and hyper closes the connection it was waiting on.)
    ///
    /// Boxed for every request, so kept small: no `async fn` (its future would keep its
    /// arguments twice), and the rare resend through the pool boxed apart.
    fn answer(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Response<ForwardBody>, ForwardError>> + Send>> {
        use futures_util::FutureExt;
        let backend = self.backend;
        match self.response_timeout {
            Some(limit) => Box::pin(
                tokio::time::timeout(limit, self.receive()).map(move |answer| {
                    answer.unwrap_or(Err(ForwardError::TimedOut(backend, limit)))
                }),
            ),
            None => Box::pin(self.receive()),
        }
    }

    /// The backend's answer, or why there is none.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future keeps each of its arguments twice"
    )]
    fn receive(self) -> impl Future<Output = Result<Response<ForwardBody>, ForwardError>> + Send {
        let Sent {
            sending,
            backend,
            gone,
            ..
        } = self;
        async move {
            let (response, connection) = match sending {
                Sending::Pooled(response) => {
                    (response.await.map_err(|e| pool_error(&e, backend))?, None)
                }
                Sending::Dedicated {
                    answer,
                    connection,
                    absolute,
                    pool,
                } => match answer.await {
                    Ok(response) => (response, Some(connection)),
                    Err(unsent) => (
                        Box::pin(resend(unsent, absolute, pool, backend)).await?,
                        None,
                    ),
                },
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // No request asks for an upgrade (`Upgrade` is not passed on), so the backend
                // is out of step with the protocol. Passed on, the 101 would leave the client
                // waiting for a protocol nobody speaks; hyper has given up the connection to
                // the upgrade, and dropping the answer closes it.
                let detail = format!("{backend} switched protocols unasked (101)");
                return Err(ForwardError::Failed(backend, detail));
            }
            if other_transfer_coding(response.headers()) {
                // Decoded from `chunked` only, its body would reach the client still encoded,
                // its coding dropped with the hop-by-hop header.
                let detail = format!("{backend} used a transfer coding other than chunked");
                return Err(ForwardError::Failed(backend, detail));
            }
            let (mut head, body) = response.into_parts();
            strip_response_head(head.status, &mut head.headers);
            let gone = if is_event_stream(&head.headers) {
                head.headers.insert(
                    HeaderName::from_static("x-accel-buffering"),
                    HeaderValue::from_static("no"),
                );
                // A stream may live for hours: end it when its backend is removed.
                gone
            } else {
                None
            };
            let body = LookAhead::new(body, connection);
            Ok(Response::from_parts(head, UntilGone::new(body, gone)))
        }
    }
}

/// A request its dedicated connection handed back (it closed a moment ago): sent through the
/// pool, to `absolute`, unless some of it was written.
async fn resend(
    mut unsent: hyper::client::conn::TrySendError<Request<ReplayBody<RequestBody>>>,
    absolute: Uri,
    pool: Pool,
    backend: BackendId,
) -> Result<Response<Incoming>, ForwardError> {
    match unsent.take_message() {
        Some(mut request) => {
            *request.uri_mut() = absolute;
            let pooled = pool.request(request);
            pooled.await.map_err(|e| pool_error(&e, backend))
        }
        // Written, at least in part, as when a pooled connection fails.
        None => {
            let error = unsent.into_error();
            Err(written_and_failed(&error, body_failed(&error), backend))
        }
    }
}

/// What a failure of the pooled client says: not delivered (nothing was written), or
/// [`written_and_failed`].
fn pool_error(error: &hyper_util::client::legacy::Error, backend: BackendId) -> ForwardError {
    if error.is_connect() && io_cause(error).is_some_and(local_shortage) {
        // Out of descriptors or ports here: nothing the backend did, so the router is not told.
        return ForwardError::Local(format!("{error:?}"));
    }
    match undelivered(error) {
        Some(why) => {
            // A refusal is how a dead backend answers; anything else (a timeout, a reset) is
            // worth a line, as a 502 is: a pinned request is answered 503 for it.
            if why != Undelivered::Refused {
                eprintln!("proxy: not delivered to {backend} ({why:?}): {error:?}");
            }
            ForwardError::Undelivered(why, format!("{error:?}"))
        }
        None => written_and_failed(error, client_failed(error), backend),
    }
}

/// A request that failed once written, at least in part: the client's body failed
/// (`client_body`), or the backend failed after the request may have run (the layer asks
/// whether the backend died with it).
fn written_and_failed(
    error: &dyn std::fmt::Debug,
    client_body: bool,
    backend: BackendId,
) -> ForwardError {
    if client_body {
        return ForwardError::ClientBody;
    }
    ForwardError::Failed(backend, format!("{backend} failed: {error:?}"))
}

impl Backends {
    /// A new pool of backend connections (each thread that serves clients has its own: a
    /// pooled connection is driven on the runtime that opened it).
    fn pool(&self) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .http1_max_buf_size(BUFFER_LIMIT)
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .build(connector);
        Arc::new(client)
    }

    /// Makes the request for the backend the layer named and hands it to the `dedicated`
    /// connection or the `pool` (`Err`: that backend is gone).
    fn send(
        &self,
        request: Request<ReplayBody<RequestBody>>,
        pool: &Pool,
        dedicated: Option<&Arc<Dedicated>>,
    ) -> Result<Sent, ForwardError> {
        let backend = match request.body().upstream() {
            Some(upstream) => upstream.backend(),
            // Without the layer (`Config::bypass_router`): the first backend.
            None if self.bypass_router => self.first().ok_or_else(|| {
                ForwardError::Undelivered(Undelivered::Refused, "no backend".into())
            })?,
            // Never: the layer names the backend of every request it passes on. Sent nowhere
            // rather than to a backend the router did not choose.
            None => {
                return Err(ForwardError::Local(
                    "no backend named for the request".into(),
                ));
            }
        };
        let (mut parts, body) = request.into_parts();
        // Only a GET stream is ended when its backend goes: it has no end of its own. A POST's
        // answer ends with the call, as a draining proxy lets it.
        let stream = parts.method == Method::GET;
        let Some(Target { uri, host, gone }) = self.target(backend, &parts.uri, stream) else {
            // Removed between the router's decision and here: nothing listens for it now.
            let detail = format!("{backend} removed");
            return Err(ForwardError::Undelivered(Undelivered::Refused, detail));
        };
        parts.version = http::Version::HTTP_11;
        if self.rewrite_host || !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, host);
        }
        let sending = match dedicated.filter(|_| uri.scheme() == Some(&Scheme::HTTP)) {
            Some(dedicated) => {
                // A connection of its own is sent the origin form (`/path?query`).
                parts.uri = uri
                    .path_and_query()
                    .cloned()
                    .map_or_else(Uri::default, Uri::from);
                let request = Request::from_parts(parts, body);
                match dedicated.try_send(backend, || self.address_of(backend), request) {
                    Ok(answer) => Sending::Dedicated {
                        answer,
                        connection: dedicated.clone(),
                        absolute: uri,
                        pool: pool.clone(),
                    },
                    Err(mut request) => {
                        *request.uri_mut() = uri;
                        Sending::Pooled(pool.request(request))
                    }
                }
            }
            None => {
                parts.uri = uri;
                Sending::Pooled(pool.request(Request::from_parts(parts, body)))
            }
        };
        Ok(Sent {
            sending,
            backend,
            gone,
            response_timeout: self.response_timeout,
        })
    }

    /// The backend in the lowest slot, if any.
    fn first(&self) -> Option<BackendId> {
        let by_slot = self.by_slot.read().unwrap();
        by_slot.iter().flatten().map(|backend| backend.id).next()
    }

    /// Where a request for backend `id` goes (`None`: the backend is gone); with its removal
    /// switch if `stream`.
    fn target(&self, id: BackendId, uri: &Uri, stream: bool) -> Option<Target> {
        let by_slot = self.by_slot.read().unwrap();
        let backend = by_slot.get(usize::from(id.slot()))?.as_ref()?;
        if backend.id != id {
            return None;
        }
        let path_and_query = match (uri.path_and_query(), backend.prefix.is_empty()) {
            (Some(path), true) => path.clone(),
            (path, _) => {
                let path = path.map_or("/", PathAndQuery::as_str);
                format!("{}{path}", backend.prefix).parse().ok()?
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(backend.scheme.clone());
        parts.authority = Some(backend.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Some(Target {
            uri: Uri::from_parts(parts).ok()?,
            host: backend.host.clone(),
            gone: stream.then(|| backend.gone.subscribe()),
        })
    }

    /// Whether the backend refuses connections right now ([`probe::refuses`]).
    async fn refuses(&self, id: BackendId) -> bool {
        match self.address_of(id) {
            Some(addr) => probe::refuses(addr).await,
            None => false,
        }
    }

    /// `host:port` of a backend (`None`: it is gone).
    fn address_of(&self, id: BackendId) -> Option<String> {
        let upstreams = self.by_slot.read().unwrap();
        let upstream = upstreams.get(usize::from(id.slot()))?.as_ref()?;
        if upstream.id != id {
            return None;
        }
        let port = upstream.authority.port_u16().unwrap_or(80);
        Some(format!("{}:{port}", upstream.authority.host()))
    }
}

/// Why a request that failed never reached its backend, if it surely did not: hyper-util
/// reports connection failures (nothing written) as connect errors.
fn undelivered(error: &hyper_util::client::legacy::Error) -> Option<Undelivered> {
    error
        .is_connect()
        .then(|| io_cause(error).map_or(Undelivered::Failed, Undelivered::from_io))
}

/// The I/O error beneath a failure of the pooled client, if any.
fn io_cause(error: &hyper_util::client::legacy::Error) -> Option<&std::io::Error> {
    let mut causes = std::iter::successors(std::error::Error::source(error), |e| e.source());
    causes.find_map(|cause| cause.downcast_ref::<std::io::Error>())
}

/// Whether a failed request failed on the client's side (its body), not the backend's.
fn client_failed(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            return body_failed(hyper);
        }
        source = e.source();
    }
    false
}

/// Whether hyper failed a request because its body did: a user error with the body's error
/// as its cause. The other user error a client connection reports, "dispatch task is gone"
/// (the connection's task was dropped under the request), has no cause, and is the
/// backend side's failure, not the client's.
fn body_failed(error: &hyper::Error) -> bool {
    error.is_user() && std::error::Error::source(error).is_some()
}

/// Nothing listens at the address: refused, or the host or network is unreachable.
fn refused(error: &std::io::Error) -> bool {
    Undelivered::from_io(error) == Undelivered::Refused
}

/// Whether a connection attempt failed for want of something on this machine (descriptors,
/// buffers, memory, a local port), not for anything the peer did.
fn local_shortage(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

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

pin_project_lite::pin_project! {
    /// A response body that ends (cleanly, so the client reconnects) when its backend is
    /// removed, dropping the inner body and with it the backend connection.
    pub struct UntilGone<B> {
        #[pin]
        inner: Option<B>,
        gone: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    }
}

impl<B> UntilGone<B> {
    /// `inner`, ended when `gone` flips to `true` (never, without a switch).
    fn new(inner: B, gone: Option<watch::Receiver<bool>>) -> Self {
        let gone = gone.map(|mut gone| -> Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(async move {
                // Resolves on `true`, or never if the switch is dropped without flipping.
                if gone.wait_for(|g| *g).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        });
        UntilGone {
            inner: Some(inner),
            gone,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for UntilGone<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = inner.poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if let Some(gone) = this.gone {
            if gone.as_mut().poll(cx).is_ready() {
                this.inner.set(None);
                return Poll::Ready(None);
            }
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

/// Whether the answer is an event stream (`Content-Type: text/event-stream`, in any case),
/// told without allocating: every answer is asked.
fn is_event_stream(headers: &HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes().trim_ascii_start();
        v.get(..SSE.len())
            .is_some_and(|v| v.eq_ignore_ascii_case(SSE))
    })
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(bytes.into()))
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

/// 408 with `Connection: close`: the request's body did not arrive within `limit` (the rest of
/// it is not read, so the connection cannot carry another request).
fn body_timed_out(limit: Duration) -> Response<ProxyBody> {
    let why = format!("the request body did not arrive within {limit:?}\n");
    let mut timed_out = text(StatusCode::REQUEST_TIMEOUT, why);
    timed_out
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    timed_out
}

/// 503 with `Retry-After: 1`: this proxy cannot take the request now.
fn busy() -> Response<ProxyBody> {
    let mut busy = text(StatusCode::SERVICE_UNAVAILABLE, "busy\n".into());
    busy.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    busy
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
        Running::start_serving(config, |proxy, listener, stopped| {
            proxy.serve(listener, stopped)
        })
        .await
    }

    /// Starts `config`'s proxy with its admin API and maintenance task as
    /// [`start`](Running::start) does, with the data plane served by `serve` (given the
    /// proxy, the listener, and a future that completes on shutdown): another front built
    /// on the same router.
    pub async fn start_serving<F, S>(config: &Config, serve: F) -> Result<Running, String>
    where
        F: FnOnce(Arc<Proxy>, TcpListener, Pin<Box<dyn Future<Output = ()> + Send>>) -> S,
        S: Future<Output = ()> + Send + 'static,
    {
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
        tasks.spawn(serve(proxy.clone(), listener, Box::pin(stopped.clone())));
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
