//! Real MCP peers built with `rmcp` (the official Rust SDK): stateful Streamable HTTP replicas
//! with a `whoami` tool, and a client that calls it. Shared by the demo, the load generator
//! and the end-to-end tests (each includes this file with `#[path]`).
//!
//! `whoami` answers `{"replica": <name>, "count": <n>}`, where `n` counts the calls of the
//! session: rmcp builds one handler per session, and the counter lives in the handler. A reply
//! from another replica, or a count that is not the next one, is an affinity violation.

// Each includer uses part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolRequestParams, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::FixedInterval;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleClient, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The handler of one session on one replica.
#[derive(Clone)]
struct Whoami {
    replica: Arc<str>,
    calls: Arc<AtomicU64>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Whoami {
    #[tool(description = "The replica's name and how many times this session called whoami")]
    async fn whoami(&self) -> String {
        let count = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        serde_json::json!({ "replica": &*self.replica, "count": count }).to_string()
    }
}

#[tool_handler]
impl ServerHandler for Whoami {
    /// Names the replica in `serverInfo`, so that a client knows where its session lives
    /// before its first call ([`replica_of`]).
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new(&*self.replica, env!("CARGO_PKG_VERSION")),
        )
    }
}

/// A stateful rmcp Streamable HTTP server on 127.0.0.1 (every path is its MCP endpoint).
/// Dropping it (or [`kill`](Replica::kill)) closes the listener and every connection, and
/// ends every session.
pub struct Replica {
    /// Its name, returned by `whoami`.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Sessions it created.
    pub sessions: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
    cancel: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Replica {
    /// Starts a replica named `name` on an OS-assigned port.
    pub async fn start(name: &str) -> std::io::Result<Replica> {
        Self::start_on(name, "127.0.0.1:0".parse().expect("an address")).await
    }

    /// Starts a replica named `name` on `addr` (127.0.0.1 only, in this project).
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Replica> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let replica: Arc<str> = name.into();
        let sessions = Arc::new(AtomicU64::new(0));
        let config = StreamableHttpServerConfig::default();
        let token = config.cancellation_token.clone();
        let service = {
            let replica = replica.clone();
            let sessions = sessions.clone();
            StreamableHttpService::new(
                move || {
                    sessions.fetch_add(1, Ordering::SeqCst);
                    Ok(Whoami {
                        replica: replica.clone(),
                        calls: Arc::new(AtomicU64::new(0)),
                        tool_router: Whoami::tool_router(),
                    })
                },
                Arc::new(LocalSessionManager::default()),
                config,
            )
        };
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept loop drops them all.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(service.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Replica {
            name: name.to_string(),
            addr,
            sessions,
            task: Some(task),
            cancel: Box::new(move || token.cancel()),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the replica as a crash would: the port closes, connections drop, sessions end.
    pub async fn kill(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop(&mut self) {
        (self.cancel)();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An rmcp client session.
pub type Session = RunningService<RoleClient, ()>;

/// Opens a session at `url` (initialize handshake). With `reinit`, the client re-initializes
/// by itself when the session is answered 404 (rmcp's default).
pub async fn connect(url: &str, reinit: bool) -> Result<Session, String> {
    connect_with(url, reinit, None).await
}

/// [`connect`], with a client that tries `resumes` times to resume a stream cut before its
/// answer, then fails the call (`None`: rmcp's default, which tries forever).
///
/// rmcp 3.9 resumes a cut answer's stream with `GET` and `Last-Event-ID` until it succeeds,
/// even when each try is answered 404 (the session is gone): a call in flight when its
/// replica died never returns. With a bound, the call fails with "Transport closed" (rmcp's
/// text for any call whose stream closed before its answer). The tries are 200 ms apart, or
/// as far apart as the server's `retry:` field says (rmcp servers say 3 s): three take about
/// 6 s, well within [`ANSWER_LIMIT`].
pub async fn connect_with(
    url: &str,
    reinit: bool,
    resumes: Option<usize>,
) -> Result<Session, String> {
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(url).reinit_on_expired_session(reinit);
    if let Some(resumes) = resumes {
        let mut policy = FixedInterval::default();
        policy.max_times = Some(resumes);
        policy.duration = std::time::Duration::from_millis(200);
        config.retry_config = Arc::new(policy);
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    within(async { ().serve(transport).await.map_err(|e| e.to_string()) })
        .await
        .map_err(|e| format!("initialize via {url}: {e}"))
}

/// The longest any step of an rmcp client here waits for its answer: far longer than any
/// answer takes, so that a request never answered fails with an error instead of hanging its
/// caller (and a test) for good.
pub const ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// `step`, or an error once [`ANSWER_LIMIT`] has passed without its answer.
async fn within<T>(step: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(ANSWER_LIMIT, step)
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {ANSWER_LIMIT:?}")))
}

/// Ends `session` (rmcp sends `DELETE`), within [`ANSWER_LIMIT`].
pub async fn close(session: Session) -> Result<(), String> {
    within(async { session.cancel().await.map(drop).map_err(|e| e.to_string()) }).await
}

/// The replica a session's `initialize` was answered by, as it names itself in `serverInfo`.
pub fn replica_of(session: &Session) -> Option<String> {
    let info = session.peer_info()?;
    Some(info.server_info.as_ref()?.name.clone())
}

/// One `whoami` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The replica that answered.
    pub replica: String,
    /// The session's call count on that replica.
    pub count: u64,
}

/// Calls `whoami` (an error if not answered within [`ANSWER_LIMIT`]).
pub async fn whoami(session: &Session) -> Result<Reply, String> {
    let call = session.call_tool(CallToolRequestParams::new("whoami"));
    let result = within(async { call.await.map_err(|e| e.to_string()) }).await?;
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .ok_or("whoami: no text content")?;
    parse_reply(&text)
}

/// Parses `{"replica": .., "count": ..}`.
pub fn parse_reply(text: &str) -> Result<Reply, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("whoami reply {text:?}: {e}"))?;
    Ok(Reply {
        replica: value["replica"].as_str().ok_or("no replica")?.to_string(),
        count: value["count"].as_u64().ok_or("no count")?,
    })
}

/// Tracks one session's replies and counts affinity violations: a reply from another replica
/// than the session's first, or a count that is not the next one.
#[derive(Clone, Debug, Default)]
pub struct Track {
    /// The replica of the session's first reply.
    pub replica: Option<String>,
    /// The last count seen.
    pub count: u64,
    /// Replies received.
    pub calls: u64,
    /// Violations seen.
    pub violations: u64,
}

impl Track {
    /// Records a reply; returns whether it kept affinity.
    pub fn record(&mut self, reply: &Reply) -> bool {
        self.calls += 1;
        let ok = match &self.replica {
            None => {
                self.replica = Some(reply.replica.clone());
                reply.count == 1
            }
            Some(replica) => *replica == reply.replica && reply.count == self.count + 1,
        };
        self.count = reply.count;
        if !ok {
            self.violations += 1;
        }
        ok
    }

    /// Starts over (after a re-initialization): the next reply is a new session's first.
    pub fn restart(&mut self) {
        self.replica = None;
        self.count = 0;
    }
}
