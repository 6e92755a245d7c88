//! A randomised protocol driver (second adversarial review): a plain loop over a seeded RNG
//! that keeps legacy SSE streams and session `GET` streams open across other operations
//! (the model test ends each stream inside the operation that opened it), mints ids from a
//! tiny pool so that backends collide, and checks after every step:
//!
//! - `forward`: nothing goes to a removed or down backend, nor to the contested owner; a
//!   placement lands on a ready backend;
//! - `minter`: a request pinned by a protocol key goes to a backend that said that key in its
//!   current incarnation;
//! - `principal`: with principal binding, no request is forwarded while a session key it
//!   carries (header or raw query parameter) is bound to another principal;
//! - `contest`: a legacy SSE message with id X is not forwarded to B while a stream carrying
//!   X, minted by another backend that is still alive in the same incarnation, is open (the
//!   promise of #12 item 3: an id two owners claim reaches neither);
//! - `counts`: the table's per-owner counts add up to its length, which stays within capacity;
//! - `quiescence`: once every exchange ended, every backend is removed and the idle TTL and
//!   removal grace passed, `maintain` leaves the table empty (no stream count stuck open);
//! - `tenant`: a request only reaches a backend of its own tenant;
//! - `ledger`: `keys_learned` minus every fate counter equals the table's length.
//!
//! Configurations vary per seed: principal binding, the affinity cookie, operator keys
//! (shared or per principal), two tenants, a removal grace of 0 or 60 s, placement
//! attempts, a table of 24 or 4,096 entries; failed deliveries of every kind are reported at
//! random.
//!
//! `ATTACK_SEEDS` and `ATTACK_STEPS` scale it (defaults: 300 seeds of 400 steps). As
//! committed it fails on `contest` (findings 4, 6 and 8 of `attack_findings.rs`) and `ledger`
//! (finding 15). `ATTACK_SKIP_KNOWN=1` steers around those (streams of a dead owner end at
//! once, no 404 to a message whose stream lives, upkeep before re-draining, no ledger check
//! once ids collided) to look for anything else: 20,000 seeds (8 million steps) found
//! nothing more. `ATTACK_TRACE=<seed>` prints the steps that led to a violation.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::request;
use mcp_affinity::router::{End, Exchange, Health, How, Probe, Routed, Router, Undelivered};
use mcp_affinity::table::{Key, KeyKind, MemoryTableConfig, Principal, SessionTable};
use mcp_affinity::{BackendId, TenantId};

fn principal(req: &request::Parts) -> Option<Principal> {
    let token = req.headers.get("authorization")?.as_bytes();
    Some(Principal::new(token.iter().fold(7u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(*b))
    })))
}

const WHO: [Option<&str>; 3] = [None, Some("Bearer alice"), Some("Bearer mallory")];
const SSE_IDS: [&str; 4] = ["1", "2", "3", "4"];
const SESSION_IDS: [&str; 4] = ["s1", "s2", "s3", "s4"];
const TASK_IDS: [&str; 3] = ["t1", "t2", "t3"];
const SSE_PARAMS: [&str; 3] = ["sessionId", "session_id", "sessionid"];

#[derive(Clone, Copy, Debug)]
struct Setup {
    principals: bool,
    cookie: bool,
    grace: Duration,
    attempts: usize,
    operator: Option<bool>,
    tenants: bool,
    small: bool,
}

struct Stream {
    ex: Exchange,
    id: Option<String>,
    backend: BackendId,
    tenant: TenantId,
    incarnation: u64,
    /// Its backend was removed, down or revoked at some point since: its id is no longer
    /// claimed (the router may hand it to another minter, by design).
    dead: bool,
}

struct World {
    router: Router,
    setup: Setup,
    live: Vec<BackendId>,
    removed: HashSet<BackendId>,
    /// Bumped each time a backend comes back from down.
    incarnation: HashMap<BackendId, u64>,
    /// What each backend said in its current incarnation.
    said: HashMap<BackendId, HashSet<(KeyKind, String)>>,
    sse: Vec<Stream>,
    gets: Vec<Exchange>,
    now: Instant,
    capacity: usize,
    violations: BTreeMap<&'static str, (u64, usize, String)>,
    seed: u64,
    step: usize,
    log: Vec<String>,
}

impl World {
    fn violation(&mut self, kind: &'static str, what: String) {
        if std::env::var("ATTACK_TRACE")
            .ok()
            .and_then(|s| s.parse().ok())
            == Some(self.seed)
        {
            eprintln!("{}\nVIOLATION {kind}: {what}", self.log.join("\n"));
        }
        let entry = (self.seed, self.step, what);
        self.violations.entry(kind).or_insert(entry);
    }

    fn info(&self, id: BackendId) -> Option<mcp_affinity::router::BackendInfo> {
        self.router.backends().into_iter().find(|b| b.id == id)
    }

    fn alive(&self, id: BackendId) -> bool {
        !self.removed.contains(&id)
            && self.info(id).is_some_and(|b| {
                b.health != Health::Down
                    && !b.revoked
                    && b.drain_deadline
                        .is_none_or(|d| d > self.now + Duration::from_millis(2))
            })
    }

    fn said(&mut self, backend: BackendId, kind: KeyKind, id: &str) {
        self.said
            .entry(backend)
            .or_default()
            .insert((kind, id.to_owned()));
    }

    /// The session keys a request carries, raw, as the router reads them.
    fn carried(req: &request::Parts) -> Vec<(KeyKind, Vec<u8>)> {
        let mut keys: Vec<(KeyKind, Vec<u8>)> = req
            .headers
            .get_all("mcp-session-id")
            .iter()
            .map(|v| (KeyKind::Session, v.as_bytes().to_vec()))
            .collect();
        if let Some(query) = req.uri.query() {
            for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
                if SSE_PARAMS.contains(&name) {
                    keys.push((KeyKind::SseSession, value.as_bytes().to_vec()));
                }
            }
        }
        keys
    }

    fn foreign(&self, req: &request::Parts) -> bool {
        let who = principal(req);
        let Some(tenant) = tenant_of(req) else {
            return false;
        };
        Self::carried(req).into_iter().any(|(kind, id)| {
            Key::new(tenant, kind, &id)
                .ok()
                .and_then(|key| self.router.table().get(&key, self.now))
                .is_some_and(|entry| entry.principal != who)
        })
    }

    fn request(
        &mut self,
        rng: &mut Rng,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> request::Parts {
        let mut all: Vec<(&str, String)> =
            headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
        if let Some(who) = *rng.pick(&WHO) {
            all.push(("authorization", who.to_owned()));
        }
        if self.setup.tenants {
            all.push(("x-tenant", rng.below(2).to_string()));
        }
        if self.setup.operator.is_some() && rng.chance(30) {
            all.push((
                "mcp-param-workspace",
                rng.pick(&["w1", "w2", "w3"]).to_string(),
            ));
        }
        if self.setup.cookie && rng.chance(30) && !self.live.is_empty() {
            let b = *rng.pick(&self.live);
            all.push(("cookie", format!("aff={}.{}", b.slot(), b.generation())));
        }
        let refs: Vec<(&str, &str)> = all.iter().map(|(n, v)| (*n, v.as_str())).collect();
        req(method.parse().unwrap(), uri, &refs)
    }

    /// Routes `req`, possibly reporting failed deliveries, and checks the decision.
    fn route(&mut self, rng: &mut Rng, req: &request::Parts) -> Option<Exchange> {
        let foreign = self.setup.principals && self.foreign(req);
        let mut routed = self.router.route(req, self.now);
        let mut tried = Vec::new();
        while rng.chance(10) {
            let Routed::Forward(ex) = routed else { break };
            let why = *rng.pick(&[
                Undelivered::Refused,
                Undelivered::TimedOut,
                Undelivered::Failed,
            ]);
            let (backend, how, placeable) = (ex.backend(), ex.how(), ex.is_placeable());
            self.log.push(format!(
                "{}: undelivered {why:?} on {backend} ({how:?} {:?})",
                self.step, req.uri
            ));
            tried.push(backend);
            routed = self.router.on_undelivered(ex, why, self.now);
            if let Routed::Forward(again) = &routed {
                if tried.contains(&again.backend()) {
                    self.violation(
                        "forward",
                        format!("placed again on tried {}", again.backend()),
                    );
                }
                if !placeable {
                    self.violation(
                        "forward",
                        format!("a pinned request moved to {}", again.backend()),
                    );
                }
            }
        }
        let Routed::Forward(ex) = routed else {
            return None;
        };
        let backend = ex.backend();
        let info = self.info(backend);
        if backend == BackendId::CONTESTED || self.removed.contains(&backend) || info.is_none() {
            self.violation(
                "forward",
                format!(
                    "{} {} routed to removed/contested {backend}",
                    req.method, req.uri
                ),
            );
        }
        if info.as_ref().is_some_and(|b| b.health == Health::Down) {
            self.violation(
                "forward",
                format!("{} {} routed to down {backend}", req.method, req.uri),
            );
        }
        if foreign {
            self.violation(
                "principal",
                format!(
                    "{} {} forwarded with another principal's key",
                    req.method, req.uri
                ),
            );
        }
        if info
            .as_ref()
            .is_some_and(|b| Some(b.tenant) != tenant_of(req))
        {
            self.violation(
                "tenant",
                format!(
                    "{} {} of {:?} routed to {backend} of {:?}",
                    req.method,
                    req.uri,
                    tenant_of(req),
                    info.as_ref().map(|b| b.tenant)
                ),
            );
        }
        match ex.how() {
            How::Placed => {
                if !info.as_ref().is_some_and(|b| b.ready()) {
                    self.violation(
                        "forward",
                        format!("placed on {backend}, not ready: {info:?}"),
                    );
                }
            }
            How::Pinned => {
                if let Some((kind, id)) = ex.key() {
                    if kind != KeyKind::Operator {
                        let minted = self
                            .said
                            .get(&backend)
                            .is_some_and(|s| s.contains(&(kind, id.to_owned())));
                        if !minted {
                            self.violation(
                                "minter",
                                format!("{kind} {id} pinned to {backend}, which never said it"),
                            );
                        }
                    }
                    if kind == KeyKind::SseSession {
                        let rivals: Vec<String> = self
                            .sse
                            .iter()
                            .filter(|s| s.id.as_deref() == Some(id) && s.backend != backend)
                            .filter(|s| Some(s.tenant) == tenant_of(req))
                            .filter(|s| {
                                self.incarnation.get(&s.backend).copied().unwrap_or(0)
                                    == s.incarnation
                            })
                            .filter(|s| !s.dead && self.alive(s.backend))
                            .map(|s| s.backend.to_string())
                            .collect();
                        if !rivals.is_empty() {
                            self.violation(
                                "contest",
                                format!("sse id {id} pinned to {backend} while streams of {rivals:?} carry it"),
                            );
                        }
                    }
                }
            }
        }
        Some(ex)
    }

    fn respond(&mut self, ex: &mut Exchange, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let backend = ex.backend();
        let mut head = resp(status, headers);
        let outcome = self.router.on_response_head(ex, &mut head, self.now);
        if let mcp_affinity::router::HeadOutcome::Observe = outcome {
            let bytes = Bytes::copy_from_slice(body);
            let _ = self.router.on_response_chunk(ex, &bytes, self.now);
        }
        let _ = backend;
    }

    /// With `ATTACK_SKIP_KNOWN` set, streams of a backend that is removed or goes down end at
    /// once, so that finding 4 (a late end of such a stream releases a contest) does not hide
    /// other contest violations.
    fn end_streams_of_if_known_skipped(&mut self, id: BackendId) {
        if std::env::var_os("ATTACK_SKIP_KNOWN").is_none() {
            return;
        }
        let (gone, kept): (Vec<Stream>, Vec<Stream>) = std::mem::take(&mut self.sse)
            .into_iter()
            .partition(|s| s.backend == id);
        self.sse = kept;
        for s in gone {
            self.router.on_exchange_end(s.ex, End::Aborted, self.now);
        }
    }

    fn check_counts(&mut self) {
        let len = self.router.table().occupancy().len;
        // The ledger: every key the table holds was learned and has met no fate yet.
        let m = self.router.metrics();
        let fates = m.keys_forgotten
            + m.keys_expired
            + m.keys_revoked
            + m.keys_purged
            + m.keys_evicted
            + m.keys_released;
        // (Finding 15: a contested binding released with its last stream is not counted.)
        let skip = std::env::var_os("ATTACK_SKIP_KNOWN").is_some();
        if (!skip || m.key_conflicts == 0) && m.keys_learned as i64 - fates as i64 != len as i64 {
            self.violation(
                "ledger",
                format!(
                    "learned {} - fates {fates} != {len} held ({m:?})",
                    m.keys_learned
                ),
            );
        }
        if len > self.capacity {
            self.violation(
                "counts",
                format!("table holds {len} > capacity {}", self.capacity),
            );
        }
        let mut owners: HashSet<BackendId> = self.live.iter().copied().collect();
        owners.extend(self.removed.iter().copied());
        owners.insert(BackendId::CONTESTED);
        let counted: usize = owners
            .iter()
            .map(|b| self.router.table().count_owner(*b))
            .sum();
        if counted != len {
            self.violation(
                "counts",
                format!("owners count {counted} keys, table holds {len}"),
            );
        }
    }
}

fn tenant_of(req: &request::Parts) -> Option<TenantId> {
    match req.headers.get("x-tenant") {
        None => Some(TenantId::DEFAULT),
        Some(v) => Some(TenantId::new(v.to_str().ok()?.parse().ok()?)),
    }
}

fn run(seed: u64, steps: usize) -> BTreeMap<&'static str, (u64, usize, String)> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let setup = Setup {
        principals: rng.chance(60),
        cookie: rng.chance(40),
        grace: if rng.chance(50) {
            Duration::ZERO
        } else {
            Duration::from_secs(60)
        },
        attempts: rng.below(3) + 1,
        operator: rng.chance(40).then(|| rng.chance(50)),
        tenants: rng.chance(30),
        small: rng.chance(20),
    };
    let capacity = if setup.small { 24 } else { 4096 };
    let mut builder = Router::builder()
        .table_config(
            MemoryTableConfig::new()
                .with_capacity(capacity)
                .with_shards(4)
                .with_idle_ttl(Some(Duration::from_secs(3600))),
        )
        .removal_grace(setup.grace)
        .health_thresholds(2, 2)
        .placement_attempts(setup.attempts);
    if setup.principals {
        builder = builder.principal(principal);
    }
    if setup.cookie {
        builder = builder.affinity_cookie("aff");
    }
    if let Some(shared) = setup.operator {
        builder = builder
            .operator_key(mcp_affinity::router::key_fn(workspace))
            .operator_scope(if shared {
                mcp_affinity::router::OperatorScope::Shared
            } else {
                mcp_affinity::router::OperatorScope::Principal
            });
    }
    if setup.tenants {
        builder = builder.tenant(tenant_of);
    }
    let clock = Clock::new();
    let mut w = World {
        router: builder.build(),
        setup,
        live: Vec::new(),
        removed: HashSet::new(),
        incarnation: HashMap::new(),
        said: HashMap::new(),
        sse: Vec::new(),
        gets: Vec::new(),
        now: clock.now(),
        capacity,
        violations: BTreeMap::new(),
        seed,
        step: 0,
        log: Vec::new(),
    };
    for step in 0..steps {
        w.step = step;
        match rng.below(20) {
            0 if w.live.len() < 6 => {
                let tenant = if w.setup.tenants {
                    TenantId::new(rng.below(2) as u16)
                } else {
                    TenantId::DEFAULT
                };
                let name = format!("b{step}");
                let id = w.router.add_backend(tenant, &name, 1).unwrap();
                w.said.remove(&id);
                w.live.push(id);
            }
            1 if !w.live.is_empty() && rng.chance(50) => {
                let id = *rng.pick(&w.live);
                if rng.chance(50) {
                    let reborn = w.router.restart_backend(id, w.now).unwrap();
                    w.said.remove(&reborn);
                    w.live.push(reborn);
                } else {
                    w.router.remove_backend(id, w.now).unwrap();
                }
                w.live.retain(|b| *b != id);
                w.removed.insert(id);
                w.log.push(format!("{step}: remove/restart {id}"));
                w.end_streams_of_if_known_skipped(id);
            }
            2 if !w.live.is_empty() => {
                let id = *rng.pick(&w.live);
                let what = rng.below(3);
                w.log.push(format!("{step}: drain op {what} on {id}"));
                if std::env::var_os("ATTACK_SKIP_KNOWN").is_some() {
                    // Finding 6: a passed deadline is undone unless upkeep ran first.
                    let _ = w.router.maintain(w.now, 0);
                }
                match what {
                    0 => w.router.drain_backend(id, None, w.now).unwrap(),
                    1 => {
                        let d = w.now + Duration::from_secs(rng.below(120) as u64);
                        w.router.drain_backend(id, Some(d), w.now).unwrap()
                    }
                    _ => w.router.undrain_backend(id, w.now).unwrap(),
                }
            }
            3 if !w.live.is_empty() => {
                let id = *rng.pick(&w.live);
                let probe = *rng.pick(&[Probe::Up, Probe::Failed, Probe::Refused]);
                for _ in 0..rng.below(3) + 1 {
                    let before = w.info(id).map(|b| b.health);
                    let after = w.router.report_health(id, probe, w.now).unwrap();
                    if before.is_some_and(|b| b != after) {
                        w.log.push(format!("{step}: {id} {before:?} -> {after:?}"));
                    }
                    if after == Health::Down {
                        w.end_streams_of_if_known_skipped(id);
                    }
                    if before == Some(Health::Down) && after != Health::Down {
                        *w.incarnation.entry(id).or_default() += 1;
                        w.said.remove(&id);
                        if w.router.table().count_owner(id) != 0 {
                            w.violation("minter", format!("{id} came back with keys"));
                        }
                    }
                }
            }
            4 => w.now += Duration::from_secs(rng.below(90) as u64),
            5 => {
                let _ = w.router.maintain(w.now, rng.below(2000));
            }
            6 | 7 => {
                // A legacy SSE stream, kept open.
                let request = w.request(&mut rng, "GET", "/sse", &[]);
                if let Some(mut ex) = w.route(&mut rng, &request) {
                    let backend = ex.backend();
                    let id = rng.chance(90).then(|| rng.pick(&SSE_IDS).to_string());
                    let event = match &id {
                        Some(id) => format!(
                            "event: endpoint\ndata: /messages/?{}={id}\n\n",
                            rng.pick(&SSE_PARAMS)
                        ),
                        None => ": no endpoint\n\n".to_owned(),
                    };
                    if let Some(id) = &id {
                        w.said(backend, KeyKind::SseSession, id);
                    }
                    w.respond(&mut ex, 200, &[SSE], event.as_bytes());
                    w.log.push(format!(
                        "{step}: open sse {id:?} on {backend} ({request:?})",
                        request = request.headers.get("authorization")
                    ));
                    let incarnation = w.incarnation.get(&backend).copied().unwrap_or(0);
                    // A stream whose id the router could not record (table full) claims nothing.
                    let claimed = id.as_ref().is_some_and(|id| {
                        let tenant = tenant_of(&request).unwrap_or_default();
                        Key::new(tenant, KeyKind::SseSession, id.as_bytes())
                            .ok()
                            .and_then(|key| w.router.table().get(&key, w.now))
                            .is_some_and(|e| e.owner == backend || e.owner == BackendId::CONTESTED)
                    });
                    w.sse.push(Stream {
                        ex,
                        id,
                        backend,
                        tenant: tenant_of(&request).unwrap_or_default(),
                        incarnation,
                        dead: !claimed,
                    });
                }
            }
            8 if !w.sse.is_empty() => {
                let i = rng.below(w.sse.len());
                let stream = w.sse.swap_remove(i);
                let end = if rng.chance(50) {
                    End::Completed
                } else {
                    End::Aborted
                };
                w.log.push(format!(
                    "{step}: end sse {:?} on {}",
                    stream.id, stream.backend
                ));
                w.router.on_exchange_end(stream.ex, end, w.now);
            }
            9 | 10 => {
                // A legacy SSE message.
                let id = *rng.pick(&SSE_IDS);
                let path = *rng.pick(&["/messages/", "/messages", "/Messages/", "//messages/"]);
                let uri = format!("{path}?{}={id}", rng.pick(&SSE_PARAMS));
                let request = w.request(&mut rng, "POST", &uri, &[]);
                if let Some(mut ex) = w.route(&mut rng, &request) {
                    let mut status = *rng.pick(&[202u16, 202, 202, 404, 400]);
                    if status == 404 && std::env::var_os("ATTACK_SKIP_KNOWN").is_some() {
                        // Finding 8: a 404 forgets a binding whose stream lives.
                        status = 202;
                    }
                    w.log.push(format!(
                        "{step}: message {uri} -> {} answered {status} ({:?})",
                        ex.backend(),
                        request.headers.get("authorization")
                    ));
                    w.respond(&mut ex, status, &[], b"");
                    w.router.on_exchange_end(ex, End::Completed, w.now);
                }
            }
            11 => {
                // An initialize.
                let request = w.request(&mut rng, "POST", "/mcp", &[]);
                if let Some(mut ex) = w.route(&mut rng, &request) {
                    let id = *rng.pick(&SESSION_IDS);
                    let status = *rng.pick(&[200u16, 200, 200, 404, 500]);
                    w.said(ex.backend(), KeyKind::Session, id);
                    w.respond(&mut ex, status, &[("mcp-session-id", id), JSON], b"");
                    w.router.on_exchange_end(ex, End::Completed, w.now);
                }
            }
            12 | 13 => {
                // A session request: POST, GET stream (kept open), DELETE.
                let id = *rng.pick(&SESSION_IDS);
                let method = *rng.pick(&["POST", "POST", "GET", "DELETE"]);
                let request =
                    w.request(&mut rng, method, "/mcp", &[("mcp-session-id", id), LEGACY]);
                if let Some(mut ex) = w.route(&mut rng, &request) {
                    let status = *rng.pick(&[200u16, 200, 202, 404, 500]);
                    let headers: &[(&str, &str)] = if method == "GET" { &[SSE] } else { &[JSON] };
                    w.respond(&mut ex, status, headers, b"");
                    if method == "GET" && status == 200 && rng.chance(70) {
                        w.gets.push(ex);
                    } else {
                        w.router.on_exchange_end(ex, End::Completed, w.now);
                    }
                }
            }
            14 if !w.gets.is_empty() => {
                let i = rng.below(w.gets.len());
                let ex = w.gets.swap_remove(i);
                w.router.on_exchange_end(ex, End::Aborted, w.now);
            }
            15 => {
                // A 2026-07-28 call creating a task.
                let request = w.request(
                    &mut rng,
                    "POST",
                    "/mcp",
                    &[MODERN, ("mcp-method", "tools/call"), ("mcp-name", "job")],
                );
                if let Some(mut ex) = w.route(&mut rng, &request) {
                    let id = *rng.pick(&TASK_IDS);
                    w.said(ex.backend(), KeyKind::Task, id);
                    let json = format!(
                        r#"{{"jsonrpc":"2.0","id":1,"result":{{"resultType":"task","taskId":"{id}"}}}}"#
                    );
                    if rng.chance(50) {
                        w.respond(&mut ex, 200, &[JSON], json.as_bytes());
                    } else {
                        let event = format!("event: message\ndata: {json}\n\n");
                        w.respond(&mut ex, 200, &[SSE], event.as_bytes());
                    }
                    w.router.on_exchange_end(ex, End::Completed, w.now);
                }
            }
            16 => {
                let id = *rng.pick(&TASK_IDS);
                let request = w.request(
                    &mut rng,
                    "POST",
                    "/mcp",
                    &[MODERN, ("mcp-method", "tasks/get"), ("mcp-name", id)],
                );
                if let Some(mut ex) = w.route(&mut rng, &request) {
                    w.respond(&mut ex, 200, &[JSON], b"{}");
                    w.router.on_exchange_end(ex, End::Completed, w.now);
                }
            }
            17 => {
                // A keyless modern call.
                let request = w.request(
                    &mut rng,
                    "POST",
                    "/mcp",
                    &[MODERN, ("mcp-method", "tools/list")],
                );
                if let Some(mut ex) = w.route(&mut rng, &request) {
                    w.respond(&mut ex, 200, &[JSON], b"{}");
                    w.router.on_exchange_end(ex, End::Completed, w.now);
                }
            }
            18 => {
                for b in w.live.clone() {
                    let _ = w.router.keys_of(b, 8);
                }
            }
            _ => {}
        }
        w.check_counts();
        let dead: Vec<bool> = w
            .sse
            .iter()
            .map(|s| s.dead || !w.alive(s.backend))
            .collect();
        for (s, dead) in w.sse.iter_mut().zip(dead) {
            s.dead = dead;
        }
        if std::env::var_os("ATTACK_SKIP_KNOWN").is_some() {
            // Finding 4: a stream whose binding was dropped (removal, down, revocation) must
            // end before anything else happens, or its late end releases a contest.
            let (gone, kept): (Vec<Stream>, Vec<Stream>) =
                std::mem::take(&mut w.sse).into_iter().partition(|s| s.dead);
            w.sse = kept;
            for s in gone {
                w.router.on_exchange_end(s.ex, End::Aborted, w.now);
            }
        }
    }
    // Quiescence.
    w.step = steps;
    for stream in std::mem::take(&mut w.sse) {
        w.router.on_exchange_end(stream.ex, End::Completed, w.now);
    }
    for ex in std::mem::take(&mut w.gets) {
        w.router.on_exchange_end(ex, End::Completed, w.now);
    }
    for b in std::mem::take(&mut w.live) {
        w.router.remove_backend(b, w.now).unwrap();
        w.removed.insert(b);
    }
    w.now += Duration::from_secs(7200);
    let _ = w.router.maintain(w.now, usize::MAX);
    let _ = w.router.maintain(w.now, usize::MAX);
    let left = w.router.table().occupancy().len;
    if left != 0 {
        let contested = w.router.keys_of(BackendId::CONTESTED, 8);
        w.violation(
            "quiescence",
            format!("{left} entries left (contested: {contested:?})"),
        );
    }
    w.violations
}

#[test]
fn the_router_keeps_its_invariants_under_a_randomised_driver() {
    let seeds: u64 = std::env::var("ATTACK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let steps: usize = std::env::var("ATTACK_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut all: BTreeMap<&'static str, (u64, usize, String, usize)> = BTreeMap::new();
    for seed in 0..seeds {
        for (kind, (seed, step, what)) in run(seed, steps) {
            all.entry(kind).or_insert((seed, step, what, 0)).3 += 1;
        }
    }
    let report: Vec<String> = all
        .iter()
        .map(|(kind, (seed, step, what, n))| {
            format!("{kind}: {n} of {seeds} seeds; first seed {seed} step {step}: {what}")
        })
        .collect();
    assert!(
        report.is_empty(),
        "invariants broken:\n{}",
        report.join("\n")
    );
}
