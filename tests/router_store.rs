//! Fleets of routers sharing what they learn through a store (issue #10), against a simulated
//! store that the tests drive by hand: lookups, set-if-absent races, compare-and-delete, owners
//! lost anywhere, outages (503, never 404, never a guess), queued writes and reseeding; and a
//! property test in which answers are delayed, dropped and reordered.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mcp_affinity::router::store::{Looked, ReseedCursor, StoreWrite};
use mcp_affinity::router::{
    End, How, NewBackend, Probe, Reason, Routed, Router, SharedStore, Undelivered, key_fn,
};
use mcp_affinity::table::MemoryTableConfig;
use mcp_affinity::table::{KeyKind, Principal};
use mcp_affinity::{BackendId, TenantId};
use proptest::prelude::*;

const T0: u64 = 1_795_000_000;

type Store = common::sim_store::SimStore;

/// A router sharing through the store, with backends named `names` (labels `http://<name>`).
fn router(names: &[&str], now: Instant) -> (Router, Vec<BackendId>) {
    built(Router::builder(), names, now)
}

fn built(
    builder: mcp_affinity::router::RouterBuilder,
    names: &[&str],
    now: Instant,
) -> (Router, Vec<BackendId>) {
    let router = builder
        .shared_store(SharedStore::new("mcp", now, T0))
        .build();
    let ids = names
        .iter()
        .map(|n| {
            router
                .add(NewBackend::new(TenantId::DEFAULT, &format!("http://{n}")).name(n))
                .unwrap()
        })
        .collect();
    (router, ids)
}

/// Performs every queued write of `router` on `store`, reporting refused binds back.
fn flush(router: &Router, store: &mut Store, now: Instant) {
    if store.down {
        return;
    }
    for write in router.take_store_writes(usize::MAX) {
        if let Some((key, found)) = store.apply(write, now) {
            router.on_bind_taken(&key, &found, now);
        }
    }
}

/// Routes `request` through `router`, answering lookups from `store`.
fn route(router: &Router, store: &Store, request: &http::request::Parts, now: Instant) -> Routed {
    match router.route(request, now) {
        Routed::Lookup(lookup) => {
            let answer = if store.down {
                Looked::Unavailable
            } else {
                match store.get(lookup.key(), now) {
                    Some(value) => Looked::Found(value),
                    None => Looked::Missing,
                }
            };
            let key = lookup.key().to_string();
            let routed = router.on_lookup(lookup, answer, now);
            assert!(
                !matches!(routed, Routed::Lookup(_)),
                "{key} looked up twice"
            );
            routed
        }
        routed => routed,
    }
}

fn name_of(router: &Router, id: BackendId) -> String {
    router
        .backends()
        .into_iter()
        .find(|b| b.id == id)
        .unwrap()
        .name
        .to_string()
}

fn session(id: &str) -> http::request::Parts {
    post("/mcp", &[("mcp-session-id", id), LEGACY])
}

#[test]
fn a_session_learned_by_one_router_is_routed_by_another() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let (a, _) = router(&["x", "y", "z"], now);
    let (b, _) = router(&["z", "y", "x"], now);
    let owner = initialize(&a, "s1", now);
    flush(&a, &mut store, now);
    let ex = forward(route(&b, &store, &session("s1"), now));
    assert_eq!(ex.how(), How::Pinned);
    assert_eq!(name_of(&b, ex.backend()), name_of(&a, owner));
    b.on_exchange_end(ex, End::Completed, now);
    // Cached: the next request is a local hit, no lookup.
    assert!(matches!(b.route(&session("s1"), now), Routed::Forward(_)));
    let m = b.metrics();
    assert_eq!((m.store_lookups, m.store_found), (1, 1));
    // A key no router learned is unknown everywhere: 404, never a guess.
    let rejection = rejected(route(&b, &store, &session("nobody"), now));
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
}

#[test]
fn tasks_created_through_one_router_are_polled_through_another() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let (a, _) = router(&["x", "y"], now);
    let (b, _) = router(&["x", "y"], now);
    let call = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tools/call"), ("mcp-name", "job")],
    );
    let task = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"t-1"}}"#;
    let (owner, _) = exchange(&a, &call, 200, &[JSON], &[task], now);
    flush(&a, &mut store, now);
    let poll = post(
        "/mcp",
        &[MODERN, ("mcp-method", "tasks/get"), ("mcp-name", "t-1")],
    );
    let ex = forward(route(&b, &store, &poll, now));
    assert_eq!(name_of(&b, ex.backend()), name_of(&a, owner));
    b.on_exchange_end(ex, End::Completed, now);
}

#[test]
fn learning_never_overwrites_and_the_router_that_lost_the_race_adopts_the_winner() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let workspace = key_fn(|req| req.headers.get("mcp-param-workspace").map(|v| v.as_bytes()));
    let (a, _) = built(Router::builder().operator_key(workspace), &["x", "y"], now);
    let workspace = key_fn(|req| req.headers.get("mcp-param-workspace").map(|v| v.as_bytes()));
    let (b, _) = built(Router::builder().operator_key(workspace), &["y", "x"], now);
    let request = post("/mcp", &[MODERN, ("mcp-param-workspace", "acme")]);
    // Both routers look it up at once, find nothing, and place it: on different backends.
    let mut ea = forward(route(&a, &store, &request, now));
    let mut eb = forward(route(&b, &store, &request, now));
    let _ = respond(&a, &mut ea, 200, &[], &[], now);
    let _ = respond(&b, &mut eb, 200, &[], &[], now);
    let (wa, wb) = (name_of(&a, ea.backend()), name_of(&b, eb.backend()));
    a.on_exchange_end(ea, End::Completed, now);
    b.on_exchange_end(eb, End::Completed, now);
    assert_ne!(wa, wb, "least sessions spreads them");
    // A's write lands first; B's is refused and B adopts A's owner.
    flush(&a, &mut store, now);
    flush(&b, &mut store, now);
    for router in [&a, &b] {
        let ex = forward(route(router, &store, &request, now));
        assert_eq!(name_of(router, ex.backend()), wa);
        router.on_exchange_end(ex, End::Completed, now);
    }
    assert_eq!(b.metrics().store_adopted, 1);
}

#[test]
fn a_store_outage_answers_503_for_keys_not_known_here_and_keeps_local_hits_routing() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let (a, _) = router(&["x", "y"], now);
    let (b, _) = router(&["x", "y"], now);
    let known = initialize(&a, "known-here", now);
    let _ = initialize(&a, "known-elsewhere", now);
    flush(&a, &mut store, now);
    let _ = forward(route(&b, &store, &session("known-here"), now));
    store.down = true;
    // A local hit keeps routing.
    assert!(matches!(
        route(&b, &store, &session("known-here"), now),
        Routed::Forward(_)
    ));
    // A key not known here is never answered 404 (that would end a live session).
    let rejection = rejected(route(&b, &store, &session("known-elsewhere"), now));
    assert_eq!(
        rejection.reason(),
        Reason::StoreUnavailable(KeyKind::Session)
    );
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(rejection.headers().contains_key("retry-after"));
    // New conversations keep working; their writes wait.
    let fresh = initialize(&b, "fresh", now);
    assert!(b.store_queue_len() > 0);
    store.down = false;
    flush(&b, &mut store, now);
    let ex = forward(route(&a, &store, &session("fresh"), now));
    assert_eq!(name_of(&a, ex.backend()), name_of(&b, fresh));
    let _ = known;
}

#[test]
fn writes_past_the_queue_bound_are_dropped_counted_and_reseeded() {
    let now = Clock::new().now();
    let router = Router::builder()
        .operator_key(key_fn(|req| {
            req.headers.get("mcp-param-workspace").map(|v| v.as_bytes())
        }))
        .shared_store(SharedStore::new("mcp", now, T0).write_queue(4))
        .build();
    router.add_backend(TenantId::DEFAULT, "x", 1).unwrap();
    // The store is away: four sessions fill the queue.
    for i in 0..4 {
        initialize(&router, &format!("s{i}"), now);
    }
    assert_eq!(router.store_queue_len(), 4);
    // A fifth session could not reach the store: refused (503, the client starts again),
    // rather than handed out unknown to every other router.
    let mut start = forward(router.route(&post("/mcp", &[]), now));
    let outcome = respond(
        &router,
        &mut start,
        200,
        &[("mcp-session-id", "s4")],
        &[],
        now,
    );
    router.on_exchange_end(start, End::Completed, now);
    let mcp_affinity::router::HeadOutcome::Replace(rejection) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        rejection.reason(),
        Reason::StoreUnavailable(KeyKind::Session)
    );
    // A workspace's binding is dropped instead (its call ran): it is bound here only.
    for i in 0..6 {
        let call = post(
            "/mcp",
            &[
                MODERN,
                ("mcp-method", "tools/call"),
                ("mcp-param-workspace", &format!("w{i}")),
            ],
        );
        let Routed::Lookup(lookup) = router.route(&call, now) else {
            panic!("a workspace this router does not know is looked up")
        };
        let mut ex = forward(router.on_lookup(lookup, Looked::Missing, now));
        let _ = respond(&router, &mut ex, 200, &[JSON], &[b"{}"], now);
        router.on_exchange_end(ex, End::Completed, now);
    }
    assert_eq!(router.store_queue_len(), 4);
    assert_eq!(router.metrics().store_writes_dropped, 7);
    // The store came back (or came back empty): every shared key is bound again.
    let mut store = Store::default();
    let mut cursor = ReseedCursor::default();
    let mut reseeded = 0;
    loop {
        let writes = router.reseed_store(&mut cursor, 3, now);
        if writes.is_empty() {
            break;
        }
        assert!(writes.len() <= 3);
        for write in writes {
            reseeded += 1;
            store.apply(write, now);
        }
    }
    assert_eq!(reseeded, 10);
    let (other, _) = router_with_names_for(&["x"], now);
    for i in 0..4 {
        assert!(matches!(
            route(&other, &store, &session(&format!("s{i}")), now),
            Routed::Forward(_)
        ));
    }
}

fn router_with_names_for(names: &[&str], now: Instant) -> (Router, Vec<BackendId>) {
    let router = Router::builder()
        .shared_store(SharedStore::new("mcp", now, T0))
        .build();
    let ids = names
        .iter()
        .map(|n| router.add_backend(TenantId::DEFAULT, n, 1).unwrap())
        .collect();
    (router, ids)
}

#[test]
fn an_owner_lost_on_one_router_is_lost_on_every_router() {
    let mut clock = Clock::new();
    let now = clock.now();
    let mut store = Store::default();
    let (a, ids_a) = router(&["x", "y"], now);
    let (b, _) = router(&["x", "y"], now);
    let victim = (0..8)
        .map(|i| format!("v{i}"))
        .find(|id| initialize(&a, id, now) == ids_a[0])
        .unwrap();
    flush(&a, &mut store, now);
    // A sees x refuse a connection; B never does.
    let later = clock.advance(Duration::from_secs(30));
    let ex = forward(route(&a, &store, &session(&victim), later));
    let _ = a.on_undelivered(ex, Undelivered::Refused, later);
    flush(&a, &mut store, later);
    // B polls the lost records: the binding from before the loss is refused as gone.
    poll_lost(&b, &store, later);
    let rejection = rejected(route(&b, &store, &session(&victim), later));
    assert_eq!(rejection.reason(), Reason::OwnerGone(KeyKind::Session));
    // Sessions bound after the loss (the replica came back) route again.
    a.report_health(ids_a[0], Probe::Up, later).unwrap();
    a.report_health(ids_a[0], Probe::Up, later).unwrap();
    let fresh = (0..8)
        .map(|i| format!("f{i}"))
        .find(|id| initialize(&a, id, later) == ids_a[0])
        .unwrap();
    flush(&a, &mut store, later);
    assert!(matches!(
        route(&b, &store, &session(&fresh), later),
        Routed::Forward(_)
    ));
}

/// Reads every lost record of `router`'s backends from `store` and hands it over.
fn poll_lost(router: &Router, store: &Store, now: Instant) {
    for key in router.lost_keys() {
        if let Some(before) = store.get(&key, now).and_then(|v| v.parse().ok()) {
            router.on_lost(&key, before, now);
        }
    }
}

#[test]
fn a_binding_cached_before_its_owner_was_lost_elsewhere_is_refused_once_the_loss_is_polled() {
    let mut clock = Clock::new();
    let now = clock.now();
    let mut store = Store::default();
    let (a, ids_a) = router(&["x", "y"], now);
    let (b, _) = router(&["x", "y"], now);
    let cached = (0..8)
        .map(|i| format!("c{i}"))
        .find(|id| initialize(&a, id, now) == ids_a[0])
        .unwrap();
    flush(&a, &mut store, now);
    // B routes it once: now it is in B's table, and B asks the store no more.
    let ex = forward(route(&b, &store, &session(&cached), now));
    b.on_exchange_end(ex, End::Completed, now);
    // x is removed on A (its process is gone); B only reads A's lost record.
    let later = clock.advance(Duration::from_secs(30));
    a.remove_backend(ids_a[0], later).unwrap();
    flush(&a, &mut store, later);
    poll_lost(&b, &store, later);
    let rejection = rejected(route(&b, &store, &session(&cached), later));
    assert_eq!(rejection.reason(), Reason::OwnerGone(KeyKind::Session));
    // What B learned of x after the loss stays: a poll refuses only what came before.
    let (b2, ids_b2) = router(&["x", "y"], now);
    let fresh = (0..8)
        .map(|i| format!("f{i}"))
        .find(|id| initialize(&b2, id, later) == ids_b2[0])
        .unwrap();
    poll_lost(&b2, &store, later);
    assert!(matches!(
        route(&b2, &store, &session(&fresh), later),
        Routed::Forward(_)
    ));
}

#[test]
fn a_bind_taken_by_a_lost_owner_replaces_it_instead_of_adopting_it() {
    let mut clock = Clock::new();
    let now = clock.now();
    let mut store = Store::default();
    let workspace = || key_fn(|req| req.headers.get("mcp-param-workspace").map(|v| v.as_bytes()));
    let (a, ids_a) = built(
        Router::builder().operator_key(workspace()),
        &["x", "y"],
        now,
    );
    let request = post("/mcp", &[MODERN, ("mcp-param-workspace", "acme")]);
    let mut ex = forward(route(&a, &store, &request, now));
    let _ = respond(&a, &mut ex, 200, &[], &[], now);
    assert_eq!(ex.backend(), ids_a[0]);
    a.on_exchange_end(ex, End::Completed, now);
    flush(&a, &mut store, now);
    // x restarts: its bindings belong to a lost incarnation; A places the key afresh.
    let later = clock.advance(Duration::from_secs(30));
    let x = a.restart_backend(ids_a[0], later).unwrap();
    // (and takes no new conversations for now, so that the key goes to y)
    a.set_weight(x, 0).unwrap();
    flush(&a, &mut store, later);
    let mut ex = forward(route(&a, &store, &request, later));
    let _ = respond(&a, &mut ex, 200, &[], &[], later);
    let placed = ex.backend();
    a.on_exchange_end(ex, End::Completed, later);
    // The store still holds the lost binding: the bind is taken by it. A keeps its own
    // owner and replaces the lost binding, instead of moving the key to x's new process.
    flush(&a, &mut store, later);
    flush(&a, &mut store, later);
    let ex = forward(route(&a, &store, &request, later));
    assert_eq!(ex.backend(), placed);
    a.on_exchange_end(ex, End::Completed, later);
    assert_eq!(a.metrics().store_adopted, 0);
    assert_eq!(name_of(&a, placed), "y");
    // Every other router, knowing of the loss, finds A's owner in the store.
    let (b, _) = built(
        Router::builder().operator_key(workspace()),
        &["x", "y"],
        now,
    );
    poll_lost(&b, &store, later);
    let ex = forward(route(&b, &store, &request, later));
    assert_eq!(name_of(&b, ex.backend()), "y");
    assert_eq!(ex.how(), How::Pinned);
}

#[test]
fn a_forget_deletes_only_the_binding_of_the_owner_that_forgets_it() {
    let now = Clock::new().now();
    let mut store = Store::default();
    let (a, _) = router(&["x", "y"], now);
    initialize(&a, "s1", now);
    flush(&a, &mut store, now);
    let key = store.values.keys().next().unwrap().clone();
    // Meanwhile the store holds another owner's binding of that id (a newer one).
    let other = store.values[&key].0.replacen(":", ":9", 1);
    store
        .values
        .insert(key.clone(), (other.clone(), now + Duration::from_secs(60)));
    let _ = exchange(
        &a,
        &delete("/mcp", &[("mcp-session-id", "s1")]),
        200,
        &[],
        &[],
        now,
    );
    flush(&a, &mut store, now);
    assert_eq!(store.get(&key, now), Some(other.as_str()), "not ours: kept");
}

#[test]
fn keys_in_use_are_refreshed_by_upkeep_once_per_period_never_per_request() {
    let mut clock = Clock::new();
    let now = clock.now();
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_idle_ttl(Some(Duration::from_secs(300))))
        .shared_store(
            SharedStore::new("mcp", now, T0)
                .binding_ttl(Duration::from_secs(600))
                .refresh_after(Duration::from_secs(60)),
        )
        .build();
    router.add_backend(TenantId::DEFAULT, "x", 1).unwrap();
    initialize(&router, "s1", now);
    initialize(&router, "idle", now);
    let _ = router.take_store_writes(usize::MAX);
    let refreshed = |router: &Router| -> Vec<String> {
        router
            .take_store_writes(usize::MAX)
            .into_iter()
            .filter_map(|w| match w {
                StoreWrite::Refresh { key, value, ttl } => {
                    assert!(value.starts_with("1:"), "{value}");
                    assert_eq!(ttl, Duration::from_secs(600));
                    Some(key.rsplit(':').next().unwrap().to_string())
                }
                _ => None,
            })
            .collect()
    };
    for _ in 0..100 {
        route_session(&router, "s1", now).unwrap();
    }
    assert!(refreshed(&router).is_empty(), "requests write nothing");
    // The first pass refreshes what the router holds; passes come once per period.
    let _ = router.maintain(clock.advance(Duration::from_secs(1)), 1000);
    assert_eq!(refreshed(&router).len(), 2);
    let _ = router.maintain(clock.advance(Duration::from_secs(30)), 1000);
    assert!(refreshed(&router).is_empty(), "one pass per period");
    // Only s1 is used in the next period: only s1 is refreshed.
    let used = clock.advance(Duration::from_secs(20));
    route_session(&router, "s1", used).unwrap();
    let _ = router.maintain(clock.advance(Duration::from_secs(20)), 1000);
    assert_eq!(refreshed(&router), ["s1"]);
}

#[test]
fn the_binding_ttl_outlives_the_table_s_idle_ttl() {
    // A key idle for most of the table's idle TTL is still in the store: the TTL in use is
    // at least the idle TTL plus the refresh period.
    let now = Clock::new().now();
    let router = Router::builder()
        .table_config(MemoryTableConfig::new().with_idle_ttl(Some(Duration::from_secs(3600))))
        .shared_store(SharedStore::new("mcp", now, T0).binding_ttl(Duration::from_secs(600)))
        .build();
    router.add_backend(TenantId::DEFAULT, "x", 1).unwrap();
    initialize(&router, "s1", now);
    let ttl = router
        .take_store_writes(usize::MAX)
        .into_iter()
        .find_map(|w| match w {
            StoreWrite::Bind { ttl, .. } => Some(ttl),
            _ => None,
        })
        .unwrap();
    assert_eq!(ttl, Duration::from_secs(3600 + 150));
}

#[test]
fn the_store_keeps_tenants_and_principals_apart() {
    fn by_header(req: &http::request::Parts) -> Option<TenantId> {
        let n = req.headers.get("x-tenant")?.to_str().ok()?.parse().ok()?;
        Some(TenantId::new(n))
    }
    fn bearer(req: &http::request::Parts) -> Option<Principal> {
        let t = req.headers.get("authorization")?.as_bytes();
        Some(Principal::new(t.iter().map(|b| u64::from(*b)).sum()))
    }
    let now = Clock::new().now();
    let mut store = Store::default();
    let make = || {
        let router = Router::builder()
            .tenant(by_header)
            .principal(bearer)
            .shared_store(SharedStore::new("mcp", now, T0))
            .build();
        for t in [1, 2] {
            router
                .add(NewBackend::new(TenantId::new(t), "http://same"))
                .unwrap();
        }
        router
    };
    let (a, b) = (make(), make());
    let alice = [("x-tenant", "1"), ("authorization", "Bearer alice")];
    let _ = exchange(
        &a,
        &post("/mcp", &alice),
        200,
        &[("mcp-session-id", "s1")],
        &[],
        now,
    );
    flush(&a, &mut store, now);
    let ok = post("/mcp", &[alice[0], alice[1], ("mcp-session-id", "s1")]);
    assert!(matches!(route(&b, &store, &ok, now), Routed::Forward(_)));
    let other_tenant = post(
        "/mcp",
        &[("x-tenant", "2"), alice[1], ("mcp-session-id", "s1")],
    );
    assert_eq!(
        rejected(route(&b, &store, &other_tenant, now)).status(),
        StatusCode::NOT_FOUND
    );
    let mallory = post(
        "/mcp",
        &[
            alice[0],
            ("authorization", "Bearer mallory"),
            ("mcp-session-id", "s1"),
        ],
    );
    let (c, _) = (make(), ());
    assert_eq!(
        rejected(route(&c, &store, &mallory, now)).reason(),
        Reason::WrongPrincipal(KeyKind::Session)
    );
}

// --- The property: delays, drops, reorders --------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    /// A session starts through router `via`.
    Start {
        via: usize,
        id: u8,
    },
    /// A request of a session through router `via`.
    Call {
        via: usize,
        id: u8,
    },
    /// Router `via` performs (some of) its queued writes, in an order of the test's choosing.
    Flush {
        via: usize,
        keep: u8,
        rotate: u8,
    },
    /// The store goes down or comes back.
    Outage(bool),
    Advance(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3usize, 0..12u8).prop_map(|(via, id)| Step::Start { via, id }),
        6 => (0..3usize, 0..12u8).prop_map(|(via, id)| Step::Call { via, id }),
        3 => (0..3usize, any::<u8>(), any::<u8>())
            .prop_map(|(via, keep, rotate)| Step::Flush { via, keep, rotate }),
        1 => any::<bool>().prop_map(Step::Outage),
        1 => (0u16..600).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Three routers share a store whose writes arrive late, out of order, or never: a key is
    /// never routed to two owners (by name) over its life, a routed key always goes where the
    /// backend that minted it is, and no key is answered 404 while the store is down.
    #[test]
    fn a_fleet_on_an_unreliable_store_never_splits_a_key_and_never_404s_in_an_outage(
        steps in prop::collection::vec(step(), 1..80)
    ) {
        let mut clock = Clock::new();
        let names = ["x", "y", "z"];
        let routers: Vec<(Router, Vec<BackendId>)> =
            (0..3).map(|_| router(&names, clock.now())).collect();
        let mut store = Store::default();
        // session id → the backend name that minted it
        let mut minted: HashMap<String, String> = HashMap::new();
        // session id → names it was routed to
        let mut routed_to: HashMap<String, String> = HashMap::new();
        for step in steps {
            let now = clock.now();
            match step {
                Step::Start { via, id } => {
                    let id = format!("s{id}");
                    if minted.contains_key(&id) {
                        continue; // backends mint fresh ids
                    }
                    let (router, _) = &routers[via];
                    let owner = initialize(router, &id, now);
                    minted.insert(id, name_of(router, owner));
                }
                Step::Call { via, id } => {
                    let id = format!("s{id}");
                    let (router, _) = &routers[via];
                    match route(router, &store, &session(&id), now) {
                        Routed::Forward(ex) => {
                            let name = name_of(router, ex.backend());
                            router.on_exchange_end(ex, End::Completed, now);
                            prop_assert_eq!(Some(&name), minted.get(&id), "{} routed to {}", id, name);
                            let first = routed_to.entry(id.clone()).or_insert(name.clone());
                            prop_assert_eq!(&*first, &name, "{} split over two owners", id);
                        }
                        Routed::Reject(r) => {
                            if store.down {
                                prop_assert_ne!(r.status(), StatusCode::NOT_FOUND, "404 in an outage: {}", r);
                            }
                        }
                        Routed::Lookup(_) => prop_assert!(false, "looked up twice"),
                    }
                }
                Step::Flush { via, keep, rotate } => {
                    if store.down {
                        continue;
                    }
                    let (router, _) = &routers[via];
                    let mut writes = router.take_store_writes(usize::MAX);
                    if !writes.is_empty() {
                        let n = writes.len();
                        writes.rotate_left(usize::from(rotate) % n);
                    }
                    // Some writes are lost (a connection killed mid-way).
                    for (i, write) in writes.into_iter().enumerate() {
                        if keep & (1 << (i % 8)) == 0 {
                            continue;
                        }
                        if let Some((key, found)) = store.apply(write, now) {
                            router.on_bind_taken(&key, &found, now);
                        }
                    }
                }
                Step::Outage(down) => store.down = down,
                Step::Advance(secs) => { clock.advance(Duration::from_secs(u64::from(secs))); }
            }
        }
    }
}
