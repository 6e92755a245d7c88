//! The proxy's admin API ([`Proxy::serve_admin`]): metrics (OpenMetrics and JSON), the
//! backends, and the operator's actions on them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use mcp_affinity::BackendId;
use mcp_affinity::router::{BackendInfo, Metrics, OPENMETRICS_CONTENT_TYPE};
use mcp_affinity_redis::StoreMetrics;
use tokio::net::TcpListener;

use super::accept::{Acceptor, serve_with};
use super::{Proxy, ProxyBody, full, text};

/// The most connections the admin API serves at once.
const ADMIN_CONNECTIONS: usize = 64;

impl Proxy {
    /// Serves the admin API on `listener` until `shutdown` completes (at most
    /// [`ADMIN_CONNECTIONS`] connections at once).
    pub async fn serve_admin(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let header_timeout = self.header_timeout;
        let proxy = self;
        serve_with(
            Acceptor::alone(listener, ADMIN_CONNECTIONS),
            shutdown,
            Duration::ZERO,
            header_timeout,
            move |_| {
                let proxy = proxy.clone();
                let handler = move |req| {
                    let proxy = proxy.clone();
                    async move { proxy.admin(req) }
                };
                (handler, std::future::pending())
            },
        )
        .await;
    }

    /// The admin API.
    ///
    /// - `GET /metrics`: the router's metrics in the OpenMetrics text format (what Prometheus
    ///   scrapes); `GET /metrics.json` (or `/metrics?format=json`): as JSON
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
                (&Method::GET, ["metrics"]) if param("format").as_deref() != Some("json") => {
                    let mut response = text(StatusCode::OK, self.metrics().to_openmetrics());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                    );
                    return response;
                }
                (&Method::GET, ["metrics" | "metrics.json"]) => {
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
        "dedicated_connections": proxy.dedicated_connections(),
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
        "operator_binds_refused": m.store_operator_binds_refused,
        "poll_errors": s.poll_errors,
        "adopted": m.store_adopted,
    })
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
